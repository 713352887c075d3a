"""`headshot-bot` as a person runs it: a real process, its exit code and what it prints."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from backends.local.components import DOWNLOAD_MARKER
from backends.modelslab.simulator import Simulator
from bot.commands.parse import CommandError, parse_line
from bot.config import ConfigError, Settings, load_settings
from tests.conftest import EXAMPLE_SELFIE, FACES_OFF, ROOT, TEST_KEY, make_image

SETTINGS = tuple(name.upper() for name in Settings.model_fields)
# Runs the command line with these modules taken away, as if their extra were not installed.
WITHOUT = (
    "import sys\n"
    "for name in sys.argv[1].split(','): sys.modules[name] = None\n"
    "from bot.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def headshot_bot(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    without: tuple[str, ...] = (),
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    command = ["-c", WITHOUT, ",".join(without)] if without else ["-m", "bot"]
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=cwd,
        env={**clean, **FACES_OFF, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line of a refusal: exit 2, nothing else printed."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    return line


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
        (["generate", "face.png", "--demo", "--samples", "3"], "--samples must be an integer"),
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


# ---- the first five minutes (issue 14) ----------------------------------------------------


def test_env_example_copied_as_it_is_starts(tmp_path: Path) -> None:
    # Its blanks (PUBLIC_BASE_URL=, OWNER_IDS=, …) are unset, not empty values to refuse.
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    assert "PUBLIC_BASE_URL=\n" in (tmp_path / ".env").read_text()
    result = headshot_bot("migrate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = headshot_bot("generate", str(EXAMPLE_SELFIE), "--demo", "--out", "o", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_postgresql_url_without_its_driver_is_one_line(tmp_path: Path) -> None:
    result = headshot_bot(
        "migrate",
        cwd=tmp_path,
        env={"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/headshot"},
        without=("psycopg",),
    )
    assert one_line(result) == (
        "headshot-bot: invalid setting DATABASE_URL: the psycopg driver for postgresql is not "
        "installed: pip install 'headshot-bot[postgres]'"
    )


def test_s3_without_its_extra_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "face.png").write_bytes(make_image())
    result = headshot_bot(
        "generate",
        "face.png",
        "--demo",
        cwd=tmp_path,
        env={"S3_BUCKET": "headshots"},
        without=("aioboto3",),
    )
    assert one_line(result) == (
        "headshot-bot: invalid setting S3_BUCKET: aioboto3 is not installed: "
        "pip install 'headshot-bot[s3]'"
    )


@pytest.mark.parametrize("where", ["data", "data/inside"])
def test_data_dir_on_a_file_is_one_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "data").write_text("a file, not a folder")
    line = one_line(headshot_bot("migrate", cwd=tmp_path, env={"DATA_DIR": where}))
    assert line.startswith(f"headshot-bot: invalid setting DATA_DIR: {where} is ")
    assert line.endswith(": name a folder")


def test_a_data_dir_nobody_may_write_is_one_line(tmp_path: Path) -> None:
    # sysfs takes no files, whoever asks (root included): found by writing, before start-up.
    (tmp_path / "face.png").write_bytes(make_image())
    for command in (["migrate"], ["generate", "face.png", "--demo"]):
        result = headshot_bot(*command, cwd=tmp_path, env={"DATA_DIR": "/sys/headshot"})
        assert one_line(result).startswith(
            "headshot-bot: invalid setting DATA_DIR: cannot write in /sys ("
        )


def test_models_download_into_a_folder_nobody_may_write_is_one_line(tmp_path: Path) -> None:
    result = headshot_bot(
        "models",
        "download",
        "--op",
        "headshot",
        cwd=tmp_path,
        env={"LOCAL_MODELS_DIR": "/sys/models"},
    )
    assert one_line(result).startswith("headshot-bot: cannot download sd15: cannot write in /sys (")


def test_simulate_with_a_port_out_of_range_is_one_line(tmp_path: Path) -> None:
    line = one_line(headshot_bot("simulate", "--port", "99999", cwd=tmp_path))
    assert "argument --port: must be a whole number from 0 to 65535 (got '99999')" in line


def test_simulate_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(headshot_bot("simulate", "--port", str(port), cwd=tmp_path))
    assert line.startswith(f"headshot-bot: cannot listen on 127.0.0.1:{port} (")


def test_simulate_says_where_it_serves(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "simulate", "--port", "0", "--failure-rate", "0.5"],
        cwd=tmp_path,
        env=clean,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert first.startswith("headshot-bot: ModelsLab simulator on http://127.0.0.1:"), first
        url = first.split(" on ", 1)[1].strip()
        assert (
            process.stderr.readline().strip()
            == f"headshot-bot: use it with MODELSLAB_BASE_URL={url}"
        )
        # It is there: a submission without a key is refused the way ModelsLab refuses it.
        answer = httpx.post(f"{url}/api/v6/image_editing/head_shot", json={}, timeout=10)
        assert answer.status_code in (200, 400, 401, 422), answer.text
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_version_comes_from_the_package(tmp_path: Path) -> None:
    result = headshot_bot("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from importlib.metadata import version

    assert result.stdout.strip() == f"headshot-bot {version('headshot-bot')}"


def test_generate_help_gives_each_option_its_range_and_default_per_operation(
    tmp_path: Path,
) -> None:
    result = headshot_bot("generate", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert (
        "--steps N more steps: more detail, slower. headshot, facegen, avatar: 21, 31 or 41 "
        in text
    )
    assert "(default 21); flux_headshot: 1 to 26 (default 21)" in text
    assert "--samples N how many images. headshot, facegen, avatar: 1 to 2 (default 1); " in text
    assert "flux_headshot: only 1 (default 1)" in text
    assert "flux_headshot: 64 to 2048 (default 1024)" in text
    assert "--pose IMAGE a photo whose pose to copy (avatar only)" in text
    assert "--s-scale X how strongly to keep your likeness." in text
    assert "flux_headshot: not an option" in text
    assert "(default: out)" in text


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--steps", "22"], "--steps must be 21, 31 or 41 for headshot (got 22)"),
        (
            ["--op", "flux_headshot", "--samples", "2"],
            "flux_headshot makes one image at a time: leave out --samples or use 1",
        ),
        (
            ["--op", "flux_headshot", "--s-scale", "1"],
            "--s-scale is not an option of flux_headshot: leave it out",
        ),
        (["--op", "flux_headshot", "--steps", "30"], "--steps must be an integer from 1 to 26"),
        (["--guidance", "9"], "--guidance must be a number from 1.0 to 7.5 for headshot (got 9.0)"),
        (["--pose", "face.png"], "--pose is for --op avatar only: headshot takes no pose image"),
        (
            ["--op", "facegen", "--pose", "face.png"],
            "--pose is for --op avatar only: facegen takes no pose image",
        ),
    ],
)
def test_generate_errors_name_the_flag_and_what_the_operation_allows(
    tmp_path: Path, args: list[str], line: str
) -> None:
    (tmp_path / "face.png").write_bytes(make_image())
    result = headshot_bot("generate", "face.png", "--demo", *args, cwd=tmp_path)
    assert one_line(result).startswith(f"headshot-bot: {line}")
    assert not (tmp_path / "data").exists()  # nothing started


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        (
            "/flux_headshot samples=2",
            "/flux_headshot allows only samples=1: leave it out or use 1.",
        ),
        ("/headshot samples=3", "samples must be from 1 to 2 (got 3)."),
    ],
)
def test_chat_errors_name_the_chat_option(typed: str, message: str) -> None:
    # The same limits, in the chat's words: the option as it is typed there.
    with pytest.raises(CommandError) as refused:
        parse_line(typed)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("a-file", "--out a-file is a file: name a folder"),
        ("a-file/shots", "--out a-file/shots is inside "),
        # sysfs takes no files, whoever asks: a place nobody may write.
        ("/sys/shots", "--out /sys/shots: cannot write in /sys ("),
    ],
)
async def test_generate_checks_out_before_anything_is_submitted(
    tmp_path: Path, simulator: Simulator, out: str, message: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    env = {"MODELSLAB_BASE_URL": simulator.base_url, "MODELSLAB_API_KEY": TEST_KEY}
    args = ("generate", str(EXAMPLE_SELFIE), "--out", out)
    result = await asyncio.to_thread(headshot_bot, *args, cwd=tmp_path, env=env)
    assert one_line(result).startswith(f"headshot-bot: {message}")
    assert simulator.jobs == {}  # nothing was paid for
    # The same command with a folder it can write makes and keeps the image.
    args = ("generate", str(EXAMPLE_SELFIE), "--out", "shots")
    result = await asyncio.to_thread(headshot_bot, *args, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert len(simulator.jobs) == 1
    assert (tmp_path / result.stdout.strip()).is_file()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_modelslab_is_said_plainly_and_soon(tmp_path: Path) -> None:
    port = _closed_port()
    started = time.monotonic()
    result = headshot_bot(
        "generate",
        str(EXAMPLE_SELFIE),
        cwd=tmp_path,
        env={"MODELSLAB_BASE_URL": f"http://127.0.0.1:{port}", "MODELSLAB_API_KEY": TEST_KEY},
        timeout=120,
    )
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.endswith(
        f"failed: the generator cannot be reached (cannot reach ModelsLab at "
        f"http://127.0.0.1:{port}: check the network or MODELSLAB_BASE_URL)"
    ), result.stderr
    # A person at a terminal pays no credits: nothing about them.
    assert "credit" not in result.stderr.lower() and "refund" not in result.stderr.lower()
    assert "busy" not in result.stderr
    # The whole command, start-up included, on a shared machine (it took 63 s before).
    assert took < 20, took


def test_models_list_ends_with_a_summary_and_what_to_run(tmp_path: Path) -> None:
    env = {"LOCAL_MODELS_DIR": "models"}
    result = headshot_bot("models", "list", "--op", "facegen", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5  # the list itself stays as scripts read it
    assert result.stderr.splitlines() == [
        "0 of 5 present, 5 missing: fetch them with headshot-bot models download --op facegen"
    ]
    # One present, one stopped half-way, the rest of every operation's missing.
    (tmp_path / "models" / "sd15").mkdir(parents=True)
    (tmp_path / "models" / "sd15" / "weights.bin").write_bytes(b"x")
    (tmp_path / "models" / "sdxl").mkdir()
    (tmp_path / "models" / "sdxl" / DOWNLOAD_MARKER).touch()
    result = headshot_bot("models", "list", cwd=tmp_path, env=env)
    total = len(result.stdout.splitlines())
    assert result.stderr.splitlines() == [
        f"1 of {total} present, {total - 2} missing, 1 partly downloaded: fetch them with "
        "headshot-bot models download"
    ]
    for name in [line.split()[1].split("/")[-1] for line in result.stdout.splitlines()]:
        (tmp_path / "models" / name).mkdir(exist_ok=True)
        (tmp_path / "models" / name / DOWNLOAD_MARKER).unlink(missing_ok=True)
        (tmp_path / "models" / name / "weights.bin").write_bytes(b"x")
    result = headshot_bot("models", "list", cwd=tmp_path, env=env)
    assert result.stderr.splitlines() == [
        f"all {total} present: set BACKEND=local (or auto) to use them"
    ]
