"""The Dockerfile and docker-compose.yml, checked without Docker (there is no daemon here): the
compose file against the compose specification's schema, then what a schema cannot see.

The image's health check is run for real against the bot's web server on a port of its own. The
cluster's replicas use only real settings, share one database, image store and key, run each
Discord shard once, and sit behind a load balancer that names every one of them. The `gpu`
profile runs the local backend on a reserved GPU with its models in a volume, in an image whose
only onnxruntime is the GPU build, and a GPU worker of the cluster that holds none of the bot's
secrets. The `monitoring` profile's Prometheus scrapes every bot, and its Grafana is provisioned
with that Prometheus and the dashboard (which tests/test_prometheus_scrape.py runs for real)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
import yaml

from bot.config import Settings
from tests.cluster import free_port
from tests.conftest import AppFactory

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
# compose-go's schema/compose-spec.json, the one `docker compose` validates with (see README.md
# beside it for its version and licence).
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
USE_ONNXRUNTIME_GPU = ROOT / "deploy" / "use-onnxruntime-gpu.sh"
CLUSTER = "cluster"
GPU = "gpu"
MONITORING = "monitoring"
LB = "lb"
# Where the image keeps the project (the Dockerfile's WORKDIR).
APP = "/app/"
# `$$` (a dollar sign), `${NAME}`, `${NAME:-default}` and `${NAME-default}`: compose's
# interpolation, here with nothing set, so every default applies.
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}")

Service = dict[str, Any]


def interpolate(value: str) -> str:
    return VARIABLE.sub(lambda m: "$" if m.group(0) == "$$" else m.group(2) or "", value)


def environment(service: Service) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "write environment as a mapping"
    return {name: interpolate(str(value)) for name, value in env.items()}


def depends_on(service: Service) -> dict[str, str]:
    """Dependency -> condition."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def published(service: Service) -> list[tuple[int, int]]:
    """(host port, container port) for each `ports` entry."""
    pairs = []
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        pairs.append((int(host), int(container)))
    return pairs


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "check_jsonschema"]
    return subprocess.run(
        [*command, "--schemafile", str(SCHEMA), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def image_env() -> dict[str, str]:
    """The Dockerfile's ENV, as every container of the image starts with."""
    env: dict[str, str] = {}
    for line in dockerfile():
        if line.startswith("ENV "):
            env.update(part.split("=", 1) for part in shlex.split(line.removeprefix("ENV ")))
    return env


def image_healthcheck() -> list[str]:
    """The Dockerfile's HEALTHCHECK as a compose `test`."""
    found = [line for line in dockerfile() if line.startswith("HEALTHCHECK ")]
    assert len(found) == 1
    command = found[0].split(" CMD ", 1)[1].strip()
    if command.startswith("["):
        return ["CMD", *json.loads(command)]
    return ["CMD-SHELL", command]


def build_extras(service: Service) -> list[str]:
    args = service["build"].get("args", {}) if isinstance(service["build"], dict) else {}
    assert "EXTRAS" in args, "pass the image's extras (the Dockerfile's EXTRAS) explicitly"
    return str(args["EXTRAS"]).split(",")


def reserved_gpus(service: Service) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [
        device
        for device in devices.get("devices", [])
        if device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", [])
    ]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    return cast(dict[str, Service], compose["services"])


@pytest.fixture(scope="module")
def replicas(services: dict[str, Service]) -> dict[str, Service]:
    found = {
        name: service
        for name, service in services.items()
        if service.get("command") == ["headshot-bot", "run"]
        and "DATABASE_URL" in service.get("environment", {})
    }
    assert len(found) >= 2, "the cluster needs several replicas"
    return found


def test_the_file_follows_the_compose_specification() -> None:
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_wrong_key(tmp_path: Path, compose: dict[str, Any]) -> None:
    broken = {**compose, "services": {**compose["services"], "lb": {"depends_of": ["bot-1"]}}}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = check_jsonschema(path)
    assert result.returncode == 1
    assert "depends_of" in result.stdout


def test_the_schema_check_reads_the_gpu_reservation(
    tmp_path: Path, compose: dict[str, Any], services: dict[str, Service]
) -> None:
    name, service = next((n, s) for n, s in services.items() if reserved_gpus(s))
    wrong = {"devices": [{"driver": "nvidia", "count": 1, "capability": ["gpu"]}]}
    broken_service = {**service, "deploy": {"resources": {"reservations": wrong}}}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump({**compose, "services": {**services, name: broken_service}}))
    result = check_jsonschema(path)
    assert result.returncode == 1
    assert "capability" in result.stdout


def test_the_quick_start_runs_one_process_on_sqlite(services: dict[str, Service]) -> None:
    # `docker compose up -d` starts the services without a profile: the single bot alone.
    default = [name for name, service in services.items() if not service.get("profiles")]
    assert default == ["headshot-bot"]
    single = services["headshot-bot"]
    assert single["command"] == ["headshot-bot", "run"]
    assert "DATABASE_URL" not in environment(single)
    for name, service in services.items():
        if name != "headshot-bot":
            assert service["profiles"] in ([CLUSTER], [GPU], [MONITORING]), name


def test_long_running_services_have_healthchecks(services: dict[str, Service]) -> None:
    # The single bot has the Dockerfile's HEALTHCHECK.
    for name, service in services.items():
        if service.get("profiles") and service.get("restart") != "no":
            check = service.get("healthcheck", {})
            if check.get("disable"):
                # Only one that serves nothing: the image's check asks its web server.
                assert not service.get("ports"), f"{name} publishes a port but has no check"
                continue
            assert check.get("test"), f"{name} has no healthcheck"


def health_checks(services: dict[str, Service]) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Where the image runs -> its health check and its environment: the image alone, then each
    service built from the Dockerfile (its own check, or the image's)."""
    image = image_env()
    checks = {"Dockerfile": (image_healthcheck(), image)}
    for name, service in services.items():
        if "build" in service and not service.get("healthcheck", {}).get("disable"):
            test = service.get("healthcheck", {}).get("test") or image_healthcheck()
            checks[name] = (test, {**image, **environment(service)})
    return checks


async def run_check(test: list[str], env: dict[str, str], cwd: Path) -> int:
    """Run a compose/Docker health check here: the image's /app/ is this checkout, and `python`
    is this interpreter."""
    assert test[0] in ("CMD", "CMD-SHELL"), test
    args = [arg.replace(APP, f"{ROOT}/") for arg in test[1:]]
    if test[0] == "CMD-SHELL":
        args = ["/bin/sh", "-c", " ".join(args)]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env={"PATH": path, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), 30)


@pytest.mark.parametrize("database_kind", ["sqlite"])
async def test_every_healthcheck_follows_the_configured_port(
    make_app: AppFactory, services: dict[str, Service], tmp_path: Path
) -> None:
    # The bot's own server, on a port that is not the image's 8080; and a port where nothing
    # listens, which must count as unhealthy.
    app = await make_app(web_port=free_port())
    port = urlsplit(app.base_url).port
    assert port is not None and port != 8080
    nobody = free_port()
    for name, (test, env) in health_checks(services).items():
        assert await run_check(test, {**env, "WEB_PORT": str(port)}, tmp_path) == 0, name
        assert await run_check(test, {**env, "WEB_PORT": str(nobody)}, tmp_path) != 0, name


def test_dependencies_exist_and_can_be_met(services: dict[str, Service]) -> None:
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on {dependency}, not a service"
            target = services[dependency]
            if condition == "service_healthy":
                assert "healthcheck" in target, f"{dependency} has no healthcheck"
            if condition == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dependency} is not a one-shot"
            # `--profile cluster up lb` starts what it needs; nothing needs the single bot.
            assert target.get("profiles") == service.get("profiles"), (name, dependency)


def test_replica_settings_are_real_settings(replicas: dict[str, Service]) -> None:
    known = {name.upper() for name in Settings.model_fields}
    for name, replica in replicas.items():
        env = environment(replica)
        assert set(env) <= known, f"{name}: not settings: {sorted(set(env) - known)}"
        values: dict[str, Any] = {key.lower(): value for key, value in env.items()}
        settings = Settings(_env_file=None, **values)
        assert settings.effective_database_url.startswith("postgresql+psycopg://")
        assert settings.s3_bucket, f"{name} needs a shared image store"


def test_replicas_share_database_store_and_key(
    compose: dict[str, Any], services: dict[str, Service], replicas: dict[str, Service]
) -> None:
    shared = [
        {k: v for k, v in environment(r).items() if k != "DISCORD_SHARD_IDS"}
        for r in replicas.values()
    ]
    assert all(env == shared[0] for env in shared)
    env = shared[0]

    database = urlsplit(env["DATABASE_URL"])
    postgres = environment(services[str(database.hostname)])
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path == "/" + postgres["POSTGRES_DB"]

    store = urlsplit(env["S3_ENDPOINT_URL"])
    minio = environment(services[str(store.hostname)])
    assert (env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    makes_bucket = [
        name
        for name, service in services.items()
        if f"/{env['S3_BUCKET']}" in " ".join(service.get("command", []))
    ]
    assert makes_bucket == ["create-bucket"]

    secret = env["PSEUDONYM_KEY_FILE"].removeprefix("/run/secrets/")
    assert secret in compose["secrets"]
    for name, replica in replicas.items():
        assert secret in replica["secrets"], name
        assert depends_on(replica)["create-bucket"] == "service_completed_successfully"


def test_public_base_url_is_the_load_balancer(
    services: dict[str, Service], replicas: dict[str, Service]
) -> None:
    urls = {environment(replica)["PUBLIC_BASE_URL"] for replica in replicas.values()}
    assert len(urls) == 1
    url = urlsplit(urls.pop())
    assert url.port in {host for host, _ in published(services[LB])}
    # The load balancer is the only way in.
    for name, replica in replicas.items():
        assert not replica.get("ports"), f"{name} publishes a port of its own"


def test_each_discord_shard_runs_on_one_replica(replicas: dict[str, Service]) -> None:
    totals = {environment(replica)["DISCORD_SHARDS"] for replica in replicas.values()}
    assert len(totals) == 1
    shards = Counter(
        int(shard)
        for replica in replicas.values()
        for shard in environment(replica)["DISCORD_SHARD_IDS"].split(",")
    )
    assert shards == Counter(range(int(totals.pop())))


def test_load_balancer_sends_to_every_replica(
    services: dict[str, Service], replicas: dict[str, Service]
) -> None:
    lb = services[LB]
    source = next(v.split(":")[0] for v in lb["volumes"] if "/etc/nginx/" in v)
    config = re.sub(r"#.*", "", (ROOT / source).read_text())

    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", config, re.DOTALL)
    assert upstream is not None
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", upstream.group(2), re.MULTILINE)
    assert sorted(servers) == sorted(
        (name, environment(replica)["WEB_PORT"]) for name, replica in replicas.items()
    )
    assert re.search(rf"proxy_pass\s+http://{upstream.group(1)};", config)
    listen = re.search(r"listen\s+(\d+);", config)
    assert listen is not None
    assert int(listen.group(1)) in {container for _, container in published(lb)}
    assert set(depends_on(lb)) == set(replicas)


def test_images_are_built_with_their_extras(services: dict[str, Service]) -> None:
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    lines = dockerfile()
    assert "ARG EXTRAS=s3,postgres" in lines
    assert any(re.match(r'RUN pip install .*"\.\[\$\{EXTRAS\}\]"', line) for line in lines)
    built = {
        name: build_extras(service) for name, service in services.items() if "build" in service
    }
    assert built
    for name, wanted in built.items():
        assert set(wanted) <= extras, f"{name}: no such extra: {sorted(set(wanted) - extras)}"
        # The local backend only where a GPU is reserved, and there with onnxruntime's GPU build.
        on_gpu = bool(reserved_gpus(services[name]))
        assert ("local" in wanted, "gpu" in wanted) == (on_gpu, on_gpu), name


def test_the_gpu_profile_runs_the_local_backend_on_one_machine(
    compose: dict[str, Any], services: dict[str, Service]
) -> None:
    gpu = {name: service for name, service in services.items() if service.get("profiles") == [GPU]}
    bots = [s for s in gpu.values() if s.get("command") == ["headshot-bot", "run"]]
    assert len(bots) == 1, "one single-machine bot in the gpu profile"
    bot = bots[0]
    env = {**image_env(), **environment(bot)}
    known = {name.upper() for name in Settings.model_fields}
    assert set(environment(bot)) <= known
    settings = Settings(_env_file=None, **{key.lower(): value for key, value in env.items()})
    assert settings.backend == "local"
    assert settings.effective_database_url.startswith("sqlite")
    assert reserved_gpus(bot), "reserve the GPU: deploy.resources.reservations.devices"

    # The model folders live in a named volume, mounted where the bot looks for them.
    mounts = dict(reversed(str(v).split(":")[:2]) for v in bot["volumes"])
    models = mounts.get(str(settings.local_models_dir))
    assert models in compose["volumes"], f"mount a volume at {settings.local_models_dir}"
    # The same history as the CPU bot: switching to the GPU keeps users' jobs and quota.
    single = dict(reversed(str(v).split(":")[:2]) for v in services["headshot-bot"]["volumes"])
    assert mounts[str(settings.data_dir)] == single[str(settings.data_dir)]


def test_the_gpu_worker_gets_the_store_and_its_database_role_and_no_secret_of_the_bots(
    compose: dict[str, Any], services: dict[str, Service], replicas: dict[str, Service]
) -> None:
    workers = [s for s in services.values() if s.get("command") == ["headshot-bot", "gpu-worker"]]
    assert len(workers) == 1, "one gpu-worker service"
    worker = workers[0]
    assert worker["profiles"] == [GPU]
    assert reserved_gpus(worker), "reserve the GPU: deploy.resources.reservations.devices"
    assert {"local", "gpu"} <= set(build_extras(worker))
    # Outbound connections only; and nothing from .env but what the file names.
    assert not worker.get("ports") and not worker.get("expose")
    assert "env_file" not in worker and "secrets" not in worker
    env = environment(worker)
    bots_secrets = {"MODELSLAB_API_KEY", "DISCORD_TOKEN", "TELEGRAM_BOT_TOKEN", "PSEUDONYM_KEY"}
    bots_secrets |= {"PSEUDONYM_KEY_FILE", "OWNER_IDS"}
    assert not set(env) & bots_secrets
    assert "GPU_WORKER_DATABASE_URL" in str(worker["environment"]["DATABASE_URL"])
    known = {name.upper() for name in Settings.model_fields}
    assert set(env) <= known, f"not settings: {sorted(set(env) - known)}"
    role = "postgresql+psycopg://gpu:secret@postgres:5432/headshot"
    values: dict[str, Any] = {
        key.lower(): value for key, value in {**env, "DATABASE_URL": role}.items()
    }
    settings = Settings(_env_file=None, **values)
    assert settings.local_device == "cuda:0"
    # The same image store as the replicas: the images it writes are the ones they serve.
    store = (
        "S3_BUCKET",
        "S3_ENDPOINT_URL",
        "S3_REGION",
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
    )
    replica = environment(next(iter(replicas.values())))
    assert {k: env[k] for k in store} == {k: replica[k] for k in store}
    # The models, read-only, where it looks for them.
    mounts = {
        target: (source, rest)
        for source, target, *rest in (str(v).split(":") for v in worker["volumes"])
    }
    source, options = mounts[str(settings.local_models_dir)]
    assert source in compose["volumes"] and options == ["ro"]
    # Its health is its heartbeat row (nothing listens), and a stop waits for its job to end.
    assert worker["healthcheck"] == {"disable": True}
    assert worker["stop_grace_period"] == "2m"


def mounts_of(service: Service) -> dict[str, tuple[str, list[str]]]:
    """Container path -> (host path or volume, options) for each `volumes` entry."""
    found = {}
    for entry in service.get("volumes", []):
        source, target, *options = str(entry).split(":")
        found[target] = (source, options)
    return found


def test_the_monitoring_profile_scrapes_every_bot_and_shows_the_dashboard(
    compose: dict[str, Any], services: dict[str, Service]
) -> None:
    monitoring = {n: s for n, s in services.items() if s.get("profiles") == [MONITORING]}
    assert set(monitoring) == {"prometheus", "grafana"}
    prometheus, grafana = monitoring["prometheus"], monitoring["grafana"]
    for service in monitoring.values():
        assert re.fullmatch(r"[\w/.-]+:v?\d+\.\d+\.\d+", service["image"]), "pin the image"

    # Prometheus: its config, read-only, where the image reads it; its API on loopback only.
    mounts = mounts_of(prometheus)
    source, options = mounts["/etc/prometheus/prometheus.yml"]
    assert options == ["ro"]
    config = yaml.safe_load((ROOT / source).read_text())
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]
    assert mounts["/prometheus"][0] in compose["volumes"]
    # Every bot, each at its own web port (through `lb` a scrape would reach any replica).
    targets = {
        target
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    bots = {
        f"{name}:{environment(service)['WEB_PORT']}"
        for name, service in services.items()
        if service.get("command") == ["headshot-bot", "run"]
    }
    assert targets == bots
    assert all(
        job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"]
    )

    # Grafana: its data source is that Prometheus, and its dashboard provider reads the
    # dashboard's file where it is mounted; everything read-only.
    mounts = mounts_of(grafana)
    provisioning, options = mounts["/etc/grafana/provisioning"]
    assert options == ["ro"]
    provisioning_dir = ROOT / provisioning
    sources = yaml.safe_load((provisioning_dir / "datasources" / "prometheus.yml").read_text())
    [source_config] = sources["datasources"]
    assert source_config["type"] == "prometheus" and source_config["isDefault"]
    url = urlsplit(source_config["url"])
    assert url.hostname == "prometheus" and url.port == 9090
    assert source_config["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]
    providers = yaml.safe_load((provisioning_dir / "dashboards" / "headshot-bot.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    dashboards = {
        target: source
        for target, (source, options) in mounts.items()
        if target.startswith(provider["options"]["path"] + "/") and options == ["ro"]
    }
    assert list(dashboards.values()) == ["./deploy/grafana/headshot-bot.json"]
    assert json.loads((ROOT / "deploy" / "grafana" / "headshot-bot.json").read_text())["panels"]
    assert mounts["/var/lib/grafana"][0] in compose["volumes"]
    # The admin password comes from the environment (.env), with a default for a first look.
    assert "${GRAFANA_ADMIN_PASSWORD:-" in grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert published(grafana) == [(3000, 3000)]
    assert depends_on(grafana) == {"prometheus": "service_healthy"}


def test_the_models_folder_belongs_to_the_images_user() -> None:
    # A new named volume takes the ownership of the image's folder it is mounted on: without it,
    # root's, and `headshot-bot models download` could not write there.
    lines = dockerfile()
    models = image_env()["LOCAL_MODELS_DIR"]
    user = next(line.split()[1] for line in lines if line.startswith("USER "))
    made = [line for line in lines if line.startswith("RUN ") and "mkdir -p" in line]
    assert any(
        re.search(rf"mkdir -p [^&]*{models}\b", line)
        and re.search(rf"chown {user} [^&]*{models}\b", line)
        for line in made
    )


def test_the_gpu_image_swaps_onnxruntime_after_installing() -> None:
    install = next(line for line in dockerfile() if line.startswith("RUN pip install"))
    assert install.endswith(f"&& sh deploy/{USE_ONNXRUNTIME_GPU.name}")
    copied = [line for line in dockerfile() if line.startswith("COPY ")]
    assert any(f"deploy/{USE_ONNXRUNTIME_GPU.name}" in line for line in copied)


def write_wheel(folder: Path, name: str, files: dict[str, str], requires: str = "") -> None:
    """A minimal pure-Python wheel, version 1.0."""
    dist = name.replace("-", "_")
    info = f"{dist}-1.0.dist-info"
    contents = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
        + (f"Requires-Dist: {requires}\n" if requires else ""),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    with zipfile.ZipFile(folder / f"{dist}-1.0-py3-none-any.whl", "w") as wheel:
        for path, text in contents.items():
            wheel.writestr(path, text)
        wheel.writestr(
            f"{info}/RECORD", "".join(f"{path},,\n" for path in [*contents, f"{info}/RECORD"])
        )


def test_only_onnxruntimes_gpu_build_is_left_where_it_was_installed(tmp_path: Path) -> None:
    # The real packages' shape: both builds write the same `onnxruntime` package, and the face
    # library requires the CPU build by name, as insightface does.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, build in (("onnxruntime", "cpu"), ("onnxruntime-gpu", "gpu")):
        files = {
            "onnxruntime/__init__.py": f"from .capi.build import BUILD\nSOURCE = {build!r}\n",
            "onnxruntime/capi/__init__.py": "",
            "onnxruntime/capi/build.py": f"BUILD = {build!r}\n",
        }
        write_wheel(wheels, name, files)
    write_wheel(wheels, "faces", {"faces.py": "import onnxruntime\n"}, requires="onnxruntime")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }

    def run(*args: str) -> str:
        done = subprocess.run(
            args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def state() -> tuple[set[str], str]:
        """The onnxruntime distributions installed, and the build `import onnxruntime` gives."""
        script = (
            "import importlib.metadata as m, onnxruntime as o, faces; "
            "print(*sorted(d.metadata['Name'] for d in m.distributions()"
            " if d.metadata['Name'].startswith('onnxruntime')), o.BUILD, o.SOURCE)"
        )
        *names, build, source = run(python, "-c", script).split()
        assert build == source, "the two builds' files are mixed"
        return set(names), build

    # The CPU image: nothing to do.
    run(python, "-m", "pip", "install", "faces")
    run("sh", str(USE_ONNXRUNTIME_GPU))
    assert state() == ({"onnxruntime"}, "cpu")

    # The GPU image: both installed, then the GPU build alone, whole.
    run(python, "-m", "pip", "install", "onnxruntime-gpu")
    assert state()[0] == {"onnxruntime", "onnxruntime-gpu"}
    run("sh", str(USE_ONNXRUNTIME_GPU))
    assert state() == ({"onnxruntime-gpu"}, "gpu")
