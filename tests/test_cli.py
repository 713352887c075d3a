"""`headshot-bot` as a person runs it: a real process, its exit code and what it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.config import ConfigError, load_settings
from tests.conftest import EXAMPLE_SELFIE, make_image


def headshot_bot(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSLAB_", "DATA"))}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_generate_demo_writes_the_rehosted_image(tmp_path: Path, database_url: str) -> None:
    result = headshot_bot(
        "generate",
        str(EXAMPLE_SELFIE),
        "--demo",
        "--seed",
        "7",
        "--out",
        "shots",
        cwd=tmp_path,
        env={"DATABASE_URL": database_url},
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    image_path = tmp_path / line
    assert image_path.parent == tmp_path / "shots"
    with Image.open(image_path) as image:
        image.load()
        assert image.format == "JPEG" and image.width > 0
    assert "Generating your image" in result.stderr
    assert "Done: 1 image · seed 7 · job " in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "missing.jpg", "--demo"], "no such selfie file: missing.jpg"),
        (["generate", "notes.txt", "--demo"], "That file isn't an image"),
        (["generate", "face.png", "--demo", "--samples", "3"], "samples must be an integer"),
        (["generate", "face.png", "--demo", "--op", "flux_headshot", "--s-scale", "1"], "s_scale"),
        (["generate", "face.png"], "MODELSLAB_API_KEY"),
    ],
)
def test_bad_input_exits_non_zero_with_one_clear_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "face.png").write_bytes(make_image((256, 320)))
    result = headshot_bot(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_wrong_setting_names_the_variable(tmp_path: Path) -> None:
    result = headshot_bot("migrate", cwd=tmp_path, env={"MODELSLAB_MAX_QUEUED": "0"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "headshot-bot: invalid setting MODELSLAB_MAX_QUEUED: "
        "Input should be greater than or equal to 1"
    ]
    result = headshot_bot("migrate", cwd=tmp_path, env={"DATABASE_URL": "sqlite:///x.db"})
    assert "invalid setting DATABASE_URL: use sqlite+aiosqlite:///" in result.stderr


def test_migrate_creates_the_database(tmp_path: Path) -> None:
    result = headshot_bot("migrate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "headshot.db").is_file()


@pytest.mark.parametrize(
    "given",
    [
        "postgresql+psycopg://u:p@db/headshot",
        "postgresql+asyncpg://u:p@db/headshot",
        "postgresql://u:p@db/headshot",
        "postgres://u:p@db/headshot",
    ],
)
def test_every_postgresql_url_goes_through_psycopg(given: str) -> None:
    settings = load_settings(database_url=given)
    assert settings.effective_database_url == "postgresql+psycopg://u:p@db/headshot"


def test_psycopg2_urls_are_refused_with_what_to_write() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL: use postgresql\\+psycopg://"):
        load_settings(database_url="postgresql+psycopg2://u:p@db/headshot")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"discord_shard_ids": "0"}, "DISCORD_SHARD_IDS: set DISCORD_SHARDS too"),
        ({"discord_shards": 2, "discord_shard_ids": "0,2"}, "'2' is not a shard number from 0"),
        ({"discord_shards": 2, "discord_shard_ids": "one"}, "'one' is not a shard number"),
    ],
)
def test_a_replicas_shards_are_shards_of_the_total(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**settings)
    assert load_settings(discord_shards=4, discord_shard_ids="3, 1").discord_shard_list == [1, 3]
