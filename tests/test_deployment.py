"""The cluster in docker-compose.yml, checked without Docker (there is no daemon here): the file
against the compose specification's schema, then what a schema cannot see. Replicas are healthy
by the bot's real health route, use only real settings, share one database, image store and key,
run each Discord shard once, and sit behind a load balancer that names every one of them."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
import yaml

from bot.config import Settings
from bot.web import ChatWebhooks, create_web_app

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CLUSTER = "cluster"
LB = "lb"
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
        [*command, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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


def test_the_quick_start_runs_one_process_on_sqlite(services: dict[str, Service]) -> None:
    # `docker compose up -d` starts the services without a profile: the single bot alone.
    default = [name for name, service in services.items() if not service.get("profiles")]
    assert default == ["headshot-bot"]
    single = services["headshot-bot"]
    assert single["command"] == ["headshot-bot", "run"]
    assert "DATABASE_URL" not in environment(single)
    for name, service in services.items():
        if name != "headshot-bot":
            assert service["profiles"] == [CLUSTER], name


def test_long_running_services_have_healthchecks(services: dict[str, Service]) -> None:
    # The single bot has the Dockerfile's HEALTHCHECK.
    for name, service in services.items():
        if service.get("profiles") == [CLUSTER] and service.get("restart") != "no":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_replicas_are_checked_on_the_bots_health_route(replicas: dict[str, Service]) -> None:
    app = create_web_app(cast(Any, None), cast(Any, None), cast(Any, None), ChatWebhooks())
    gets = {route.resource.canonical for route in app.router.routes() if route.method == "GET"}
    assert "/healthz" in gets
    for name, replica in replicas.items():
        port = environment(replica)["WEB_PORT"]
        assert f"http://127.0.0.1:{port}/healthz" in " ".join(replica["healthcheck"]["test"]), name


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
