"""Settings from the environment and an optional `.env`. A bad value stops start-up in one line."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    ValidationInfo,
    WebsocketUrl,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.i18n.codes import SHIPPED, catalogue_for
from storage.database import missing_driver
from storage.imagestore import InvalidImageKey, missing_s3_support, validate_key
from storage.pseudonyms import key_from_text


class ConfigError(Exception):
    """A setting is missing or wrong. The message names the environment variable."""


_ONE_WORD = re.compile(r"[!-~]+")  # printable ASCII, no spaces
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CLASS_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_MODEL_FOLDERS = (
    "local_model_sd15",
    "local_model_sd15_vae",
    "local_model_ip_adapter_faceid",
    "local_model_clip_image_encoder",
    "local_model_buffalo_l",
    "local_model_antelopev2",
    "local_model_sdxl",
    "local_model_instantid",
    "local_model_controlnet_pose",
    "local_model_controlnet_canny",
    "local_model_flux_kontext",
)


class Settings(BaseSettings):
    # An empty value is unset: `.env.example` copied as it is leaves blanks, and compose passes
    # `${NAME:-}` as an empty string.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    modelslab_api_key: SecretStr | None = None
    modelslab_base_url: HttpUrl = HttpUrl("https://modelslab.com")
    modelslab_max_queued: int = Field(5, ge=1, le=100)
    modelslab_timeout: float = Field(30.0, gt=0, le=300)

    database_url: str | None = None
    # SQLite's durability: NORMAL (WAL synced at checkpoints; a power cut may lose the last
    # commits, never corrupts) or FULL (each commit synced before it returns). See README.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    data_dir: Path = Path("./data")
    public_base_url: HttpUrl | None = None
    web_host: str = "127.0.0.1"
    web_port: int = Field(8080, ge=0, le=65535)

    daily_quota: int = Field(5, ge=0, le=10_000)
    # The language of people whose own and whose community's are unknown or not shipped (a
    # catalogue's name or a platform's code: "de", "pt-BR"); unset, English. LANGUAGES.md.
    default_language: str | None = None
    max_active_per_user: int = Field(2, ge=1, le=100)
    # The operators, moderators everywhere: comma-separated "platform:id" ("discord:1234, …").
    owner_ids: str = ""
    # How long a finished job keeps its selfie so that it can be re-rolled (0: delete at once).
    selfie_retention_seconds: float = Field(3600.0, ge=0, le=7 * 24 * 3600)
    max_selfie_url_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_output_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    job_timeout_seconds: float = Field(1800.0, gt=0)
    # How long a job stays with a process that stopped renewing its lease (it died) before
    # another takes it over.
    job_lease_seconds: float = Field(30.0, ge=1, le=600)
    provider_link_ttl_seconds: float = Field(24 * 3600.0, gt=0)

    s3_bucket: str | None = None
    s3_endpoint_url: HttpUrl | None = None
    s3_region: str | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_prefix: str = ""
    # With PostgreSQL (several replicas), images must be where every replica sees them: S3, or
    # a folder the operator declares shared by all (one replica, or a network folder).
    image_store_shared: bool = False

    # Discord: `headshot-bot run` starts the Discord adapter when the token is set. The two
    # addresses point it at a Discord-compatible server (the tests' fake Discord).
    discord_token: SecretStr | None = None
    discord_api_base: HttpUrl = HttpUrl("https://discord.com/api/v10")
    discord_gateway_url: WebsocketUrl = WebsocketUrl("wss://gateway.discord.gg/")
    # Gateway shards; unset, Discord's recommendation (GET /gateway/bot) decides.
    discord_shards: int | None = Field(None, ge=1, le=1024)
    # The shards this replica runs ("0,1"), of DISCORD_SHARDS; unset, all of them. No shard runs
    # on two replicas: each is held by an advisory lock while it runs.
    discord_shard_ids: str = ""
    # Image decoding (bot/images/workers.py): worker processes, each decode's time limit and
    # memory budget, and how many uploads may wait for a worker before "busy" is answered.
    image_workers: int = Field(2, ge=1, le=64)
    image_decode_seconds: float = Field(5.0, gt=0, le=300)
    image_decode_memory_mb: int = Field(256, ge=32, le=65536)
    image_decode_queue: int = Field(512, ge=0, le=10_000)
    image_decode_wait_seconds: float = Field(10.0, gt=0, le=600)

    # Telegram: `headshot-bot run` starts the Telegram adapter when the token is set. It polls
    # for updates unless PUBLIC_BASE_URL is set: then Telegram posts them to our web server.
    telegram_bot_token: SecretStr | None = None
    telegram_api_base: HttpUrl = HttpUrl("https://api.telegram.org")
    # Results as photos (Telegram recompresses them) or as documents (the file as made).
    telegram_send_as: Literal["photo", "document"] = "photo"
    # How long the bot waits for the photo after a bare /headshot, or for a style to be picked.
    telegram_wait_seconds: float = Field(300.0, ge=1, le=3600)

    # Faces (bot/faces, dlib on the CPU). The intake check refuses a selfie with no usable face
    # before any credit moves; the identity gate measures every output against the selfie and
    # makes a failing one again (IDENTITY_RETRIES times) before delivering it with a note.
    face_check: bool = True
    face_dominance: float = Field(2.0, ge=1.0, le=100.0)
    face_min_size: int = Field(64, ge=16, le=1024)
    identity_gate: bool = True
    identity_threshold: float = Field(0.6, gt=0.0, le=2.0)
    identity_retries: int = Field(1, ge=0, le=5)
    face_workers: int = Field(1, ge=1, le=8)

    # Which generator makes the images: ModelsLab's API, the bundled local GPU pipelines, or
    # "auto" (local when its models are present and a GPU is visible, else ModelsLab when a key
    # is set). FALLBACK_BACKEND takes the jobs the first one fails.
    backend: Literal["auto", "modelslab", "local"] = "auto"
    fallback_backend: Literal["none", "modelslab", "local"] = "none"

    # The local GPU backend (`pip install 'headshot-bot[local]'`): one sub-folder per model
    # under LOCAL_MODELS_DIR (`headshot-bot models download`), each movable by LOCAL_MODEL_<NAME>.
    local_models_dir: Path = Path("./models")
    local_operations: str = "headshot,facegen,avatar,flux_headshot"
    local_device: str = "cuda"
    local_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    local_compile: bool = True
    local_fuse_qkv: bool = True
    local_channels_last: bool = True
    # Jobs the GPU worker holds at once: one running, the others staged behind it.
    local_capacity: int = Field(2, ge=1, le=16)
    local_start_timeout: float = Field(1800.0, gt=0)
    # "insightface", or "package.module:Class" for another face analyser.
    local_face_analyser: str = "insightface"
    local_model_sd15: Path | None = None
    local_model_sd15_vae: Path | None = None
    local_model_ip_adapter_faceid: Path | None = None
    local_model_clip_image_encoder: Path | None = None
    local_model_buffalo_l: Path | None = None
    local_model_antelopev2: Path | None = None
    # Replaced by the two packs above; still read, so that a left-over value is refused.
    local_model_insightface: Path | None = None
    local_model_sdxl: Path | None = None
    local_model_instantid: Path | None = None
    local_model_controlnet_pose: Path | None = None
    local_model_controlnet_canny: Path | None = None
    local_model_flux_kontext: Path | None = None

    # A GPU worker of the fleet (`headshot-bot gpu-worker`, PostgreSQL): the jobs it runs at
    # once, how often it heartbeats, and how long a silent one is taken for dead (replicas drop
    # it from their capacity, and its running job goes back to the queue).
    gpu_worker_capacity: int = Field(1, ge=1, le=16)
    gpu_worker_heartbeat_seconds: float = Field(5.0, ge=0.1, le=300)
    gpu_worker_timeout_seconds: float = Field(30.0, gt=0)

    # The key under which bans and forgotten users' spent allowance are kept (a keyed hash of
    # the platform id): the same on every process using the database. Unset, the key in
    # $DATA_DIR/pseudonym.key (made on first start).
    pseudonym_key: SecretStr | None = None
    pseudonym_key_file: Path | None = None

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "plain" for a person at a terminal; "json": one JSON object per line, for a log shipper.
    log_format: Literal["plain", "json"] = "plain"
    # `headshot-bot run`'s event loop: asyncio's own, or uvloop's (pip install uvloop), which
    # spends less CPU per request (bench/throughput.py --loop uvloop).
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    # This replica's name in JSON logs (the host name when unset).
    replica_name: str | None = None

    # Prometheus metrics at GET /metrics. METRICS_PORT serves them on their own port (bound to
    # WEB_HOST) instead of the web server's; METRICS_TOKEN makes a scrape carry
    # `Authorization: Bearer <token>`.
    metrics: bool = True
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_token: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _database_url_is_async(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith(("sqlite://", "sqlite+pysqlite://")):
            raise ValueError("use sqlite+aiosqlite:///path/to/file.db")
        if value.startswith("postgresql+psycopg2://"):
            raise ValueError("use postgresql+psycopg://user:password@host/db")
        # PostgreSQL goes through one driver, psycopg 3. A URL naming asyncpg, or none, keeps
        # working: it is read as psycopg's.
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if value.startswith(prefix):
                return _with_driver("postgresql+psycopg://" + value.removeprefix(prefix))
        if not value.startswith(("sqlite+aiosqlite:///", "postgresql+psycopg://")):
            raise ValueError("must start with sqlite+aiosqlite:/// or postgresql+psycopg://")
        return _with_driver(value)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'headshot.db'}"

    @field_validator(
        "modelslab_api_key",
        "s3_access_key_id",
        "s3_secret_access_key",
        "discord_token",
        "telegram_bot_token",
        "metrics_token",
    )
    @classmethod
    def _secret_is_one_word(cls, value: SecretStr | None) -> SecretStr | None:
        # A key pasted with a space or a line break fails later as a refusal from the provider,
        # or as a header error; the value itself is never repeated.
        if value is not None and not _ONE_WORD.fullmatch(value.get_secret_value()):
            raise ValueError("has a space or a control character in it: set the value alone")
        return value

    @field_validator("default_language")
    @classmethod
    def _default_language_is_shipped(cls, value: str | None) -> str | None:
        if value is None:
            return None
        language = catalogue_for(value)
        if language is None:
            raise ValueError(f"no catalogue for {value[:20]!r}: use one of {', '.join(SHIPPED)}")
        return language

    @field_validator("replica_name")
    @classmethod
    def _replica_name_is_one_word(cls, value: str | None) -> str | None:
        if value is not None and not (len(value) <= 64 and _ONE_WORD.fullmatch(value)):
            raise ValueError(
                "use one word of at most 64 letters, digits or signs, with no space, e.g. bot-1"
            )
        return value

    @field_validator("data_dir", "local_models_dir", *_MODEL_FOLDERS)
    @classmethod
    def _folder_is_not_a_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        for place in (value, *value.parents):
            if place.exists():
                if place == value and not place.is_dir():
                    raise ValueError(f"{value} is a file: name a folder")
                if not place.is_dir():
                    raise ValueError(f"{value} is inside {place}, which is a file: name a folder")
                break
        return value

    @field_validator("pseudonym_key_file")
    @classmethod
    def _key_file_is_not_a_folder(cls, value: Path | None) -> Path | None:
        if value is not None and value.is_dir():
            raise ValueError(f"{value} is a folder: name the file that holds the key")
        return value

    @field_validator("web_host")
    @classmethod
    def _web_host_is_an_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOST_NAME.fullmatch(value):
                raise ValueError(
                    f"{value!r} is not an address or a host name: use 127.0.0.1 (this machine "
                    "only) or 0.0.0.0 (every interface)"
                ) from None
        return value

    @field_validator("s3_bucket")
    @classmethod
    def _s3_bucket_is_usable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _BUCKET.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a bucket name: 3 to 63 lowercase letters, digits, dots or "
                "hyphens"
            )
        missing = missing_s3_support()
        if missing:
            raise ValueError(missing)
        return value

    @field_validator("s3_region")
    @classmethod
    def _s3_region_is_one_word(cls, value: str | None) -> str | None:
        if value is not None and not _REGION.fullmatch(value):
            raise ValueError(f"{value!r} is not a region name, e.g. us-east-1")
        return value

    @field_validator("s3_prefix")
    @classmethod
    def _s3_prefix_is_a_key(cls, value: str) -> str:
        if value.strip("/"):
            try:
                validate_key(value.strip("/"))
            except InvalidImageKey:
                raise ValueError(
                    f"{value!r} is not a key prefix: letters, digits, '.', '_', '-' and '/' "
                    "between names"
                ) from None
        return value

    @field_validator("local_face_analyser")
    @classmethod
    def _face_analyser_is_named(cls, value: str) -> str:
        if value != "insightface" and not _CLASS_PATH.fullmatch(value):
            raise ValueError(f"{value!r}: use insightface or package.module:Class")
        return value

    @field_validator("local_model_insightface")
    @classmethod
    def _insightface_folder_is_split_in_two(cls, value: Path | None) -> Path | None:
        if value is not None:
            raise ValueError(
                "each method now loads the face models it was trained with: set "
                "LOCAL_MODEL_BUFFALO_L (headshot, facegen, flux_headshot) and "
                "LOCAL_MODEL_ANTELOPEV2 (avatar) instead"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_in_capitals(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("discord_shard_ids")
    @classmethod
    def _shard_ids_are_shards(cls, value: str, info: ValidationInfo) -> str:
        ids = _split_ids(value)
        if not ids:
            return value
        total = info.data.get("discord_shards")
        if total is None:
            raise ValueError("set DISCORD_SHARDS too: the shard ids are out of that total")
        for entry in ids:
            if not entry.isdigit() or int(entry) >= total:
                raise ValueError(f"{entry!r} is not a shard number from 0 to {total - 1}")
        return value

    @property
    def discord_shard_list(self) -> list[int] | None:
        """The shards this replica runs, or None for all."""
        ids = [int(entry) for entry in _split_ids(self.discord_shard_ids)]
        return sorted(set(ids)) or None

    @field_validator("pseudonym_key")
    @classmethod
    def _pseudonym_key_is_hex(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            key_from_text(value.get_secret_value())
        return value

    @field_validator("owner_ids")
    @classmethod
    def _owner_ids_name_their_platform(cls, value: str) -> str:
        for entry in _split_ids(value):
            platform, _, user = entry.partition(":")
            if not (_is_id(platform) and _is_id(user)):
                # A bare id would make that number an owner on every platform.
                raise ValueError(f"{entry!r} must be platform:id, e.g. discord:1234")
        return value

    @field_validator("local_operations")
    @classmethod
    def _local_operations_are_known(cls, value: str) -> str:
        known = ("headshot", "facegen", "avatar", "flux_headshot")
        names = _split_ids(value)
        if not names:
            raise ValueError("name at least one of " + ", ".join(known))
        for name in names:
            if name not in known:
                raise ValueError(f"{name!r} is not one of " + ", ".join(known))
        return value

    @field_validator("local_device")
    @classmethod
    def _local_device_is_torch_device(cls, value: str) -> str:
        if value != "cpu" and value != "cuda" and not value.startswith("cuda:"):
            raise ValueError("use cuda, cuda:N or cpu")
        return value

    @field_validator("gpu_worker_timeout_seconds")
    @classmethod
    def _gpu_worker_timeout_spans_heartbeats(cls, value: float, info: ValidationInfo) -> float:
        # One late heartbeat (a busy database, a long pause) must not make a worker look dead.
        heartbeat = info.data.get("gpu_worker_heartbeat_seconds")
        if heartbeat is not None and value <= 2 * heartbeat:
            raise ValueError(
                f"{value:g} s must be more than twice GPU_WORKER_HEARTBEAT_SECONDS "
                f"({heartbeat:g} s), so that one late heartbeat does not make a worker dead"
            )
        return value

    @property
    def local_model_overrides(self) -> dict[str, Path]:
        """Component name -> folder, for the components whose LOCAL_MODEL_<NAME> is set."""
        prefix = "local_model_"
        return {
            name.removeprefix(prefix): value
            for name, value in self
            if name.startswith(prefix) and value is not None
        }

    @property
    def owners(self) -> frozenset[str]:
        """Owner entries, each "platform:id"."""
        return frozenset(_split_ids(self.owner_ids))

    def is_owner(self, platform: str, user_id: str) -> bool:
        return f"{platform}:{user_id}" in self.owners

    @property
    def api_key(self) -> str | None:
        return self.modelslab_api_key.get_secret_value() if self.modelslab_api_key else None

    def secrets(self) -> list[str]:
        """Every secret value in these settings: the log filter redacts them."""
        values = [
            self.modelslab_api_key,
            self.s3_access_key_id,
            self.s3_secret_access_key,
            self.discord_token,
            self.telegram_bot_token,
            self.pseudonym_key,
            self.metrics_token,
        ]
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]


def _with_driver(url: str) -> str:
    missing = missing_driver(url)
    if missing:
        raise ValueError(missing)
    return url


def _split_ids(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _is_id(text: str) -> bool:
    return bool(text) and text.replace("_", "").replace("-", "").isalnum()


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment; raises ConfigError naming the first bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]).upper() if error["loc"] else "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {name}: {message}") from None
