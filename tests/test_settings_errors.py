"""Every setting, and every flag of the command line, given a bad value: the command ends with
exit 2 and one line naming what to fix, never a traceback. Settings are enumerated from
`Settings.model_fields` and flags from the parser, so a new one is walked too (a text setting or
a generate flag needs its bad value written below; the walk says so)."""

from __future__ import annotations

import argparse
import logging
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from annotated_types import Ge, Gt, Le, Lt
from pydantic import HttpUrl, SecretStr, WebsocketUrl

from bot.cli import _parser, main
from bot.cli.flags import FLAGS
from bot.config import ConfigError, Settings, load_settings
from tests.conftest import make_image

FILE = "<a file>"
FOLDER = "<a folder>"

# Settings whose type alone accepts nearly anything: a value that is wrong for what it names.
# Paths name a file where a folder is wanted unless given here.
BAD_TEXT: dict[str, str] = {
    "modelslab_api_key": "sk two words",
    "database_url": "mysql://db/headshot",
    "web_host": "not a host!",
    "owner_ids": "1234",
    "s3_bucket": "Not_A_Bucket",
    "s3_region": "eu west 1",
    "s3_access_key_id": "AKIA EXAMPLE",
    "s3_secret_access_key": "tab\tinside",
    "s3_prefix": "../up",
    "discord_token": "token with spaces",
    "discord_shard_ids": "0",
    "telegram_bot_token": "123: abc",
    "local_operations": "painting",
    "local_device": "tpu",
    "local_face_analyser": "not a class",
    "pseudonym_key": "not hex",
    "pseudonym_key_file": FOLDER,
    "replica_name": "bot one",
    "default_language": "klingon",
    "metrics_token": "token with spaces",
}


def _types(annotation: Any) -> set[Any]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set(typing.get_args(annotation)) - {type(None)}
    return {annotation}


def _out_of_range(metadata: list[Any], kind: type) -> list[str]:
    values = []
    for rule in metadata:
        if isinstance(rule, Ge):
            values.append(rule.ge - 1)
        elif isinstance(rule, Gt):
            values.append(rule.gt)
        elif isinstance(rule, Le):
            values.append(rule.le + 1)
        elif isinstance(rule, Lt):
            values.append(rule.lt)
    return [str(kind(value)) for value in values]


def bad_values(name: str) -> list[str]:
    """What is wrong for this setting: its type's garbage, and each end of its range passed."""
    field = Settings.model_fields[name]
    kinds = _types(field.annotation)
    if name in BAD_TEXT:
        return [BAD_TEXT[name]]
    if kinds == {bool}:
        return ["maybe"]
    if kinds == {int} or kinds == {float}:
        (kind,) = kinds
        return ["lots", *_out_of_range(field.metadata, kind)]
    if kinds <= {HttpUrl, WebsocketUrl}:
        return ["not a url"]
    if kinds == {Path}:
        return [FILE]
    if len(kinds) == 1 and typing.get_origin(next(iter(kinds))) is typing.Literal:
        return ["nonsense"]
    return []


CASES = [(name, value) for name in Settings.model_fields for value in bad_values(name) or [""]]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from the environment or a `.env`; the current folder is a fresh one."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def logging_kept() -> Iterator[None]:
    """A command that gets as far as setting up logging replaces the root handlers: put back
    pytest's."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _value(value: str, tmp_path: Path) -> str:
    if value == FILE:
        (tmp_path / "a-file").write_text("not a folder")
        return str(tmp_path / "a-file")
    if value == FOLDER:
        (tmp_path / "a-folder").mkdir(exist_ok=True)
        return str(tmp_path / "a-folder")
    return value


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v!r}" for n, v in CASES])
@pytest.mark.usefixtures("logging_kept")
def test_a_bad_setting_is_one_line_naming_it(
    name: str,
    value: str,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert value, f"{name.upper()}: write a bad value for it in BAD_TEXT"
    monkeypatch.setenv(name.upper(), _value(value, clean_env))
    (clean_env / "face.png").write_bytes(make_image())
    # `generate --demo` loads the settings and starts the service, as a newcomer's first try
    # does: a bad value that slipped through either would make the image and exit 0.
    code = main(["generate", "face.png", "--demo", "--out", "shots"])
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = err.splitlines()
    assert line.startswith(f"headshot-bot: invalid setting {name.upper()}: "), line
    if SecretStr in _types(Settings.model_fields[name].annotation):
        assert value not in line  # a secret is never repeated
    assert not (clean_env / "shots").exists()


def test_an_empty_value_is_unset_for_every_setting(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = load_settings().model_dump()
    # As compose passes `${NAME:-}`: in the environment.
    for name in Settings.model_fields:
        monkeypatch.setenv(name.upper(), "")
    assert load_settings().model_dump() == defaults
    # As `.env.example` copied leaves them: in the `.env` file.
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper())
    (clean_env / ".env").write_text("".join(f"{name.upper()}=\n" for name in Settings.model_fields))
    assert load_settings().model_dump() == defaults


# ---- the command line's flags --------------------------------------------------------------

# A value each generate flag refuses for the default operation (headshot), by the documented
# limits rather than by its type.
OUT_OF_LIMITS = {
    "negative_prompt": "x" * 1001,
    "samples": "3",
    "seed": "-1",
    "width": "4096",
    "height": "4096",
    "num_inference_steps": "22",
    "guidance_scale": "11",
    "s_scale": "3",
}


def _options() -> list[tuple[str, str]]:
    """(command, flag) for every flag of every command that takes a typed or chosen value."""
    found = []
    subparsers = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, parser in subparsers.choices.items():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parsers = [(f"{command} {sub}", p) for a in nested for sub, p in a.choices.items()]
        for label, sub in parsers or [(command, parser)]:
            for action in sub._actions:
                checked = action.type in (int, float) or isinstance(action.type, types.FunctionType)
                if action.option_strings and (checked or action.choices):
                    found.append((label, action.option_strings[-1]))
    return found


OPTIONS = _options()


def _argv(command: str, flag: str, value: str) -> list[str]:
    argv = command.split()
    if command == "generate":
        argv.append("face.png")
    return [*argv, flag, value]


@pytest.mark.parametrize(("command", "flag"), OPTIONS, ids=[f"{c} {f}" for c, f in OPTIONS])
def test_a_flag_with_a_value_of_the_wrong_kind_is_one_line(
    command: str, flag: str, clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(_argv(command, flag, "nonsense"))
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    (line,) = err.splitlines()
    assert f"argument {flag}" in line and "nonsense" in line, line
    assert line.endswith(f"(see headshot-bot {command} --help)")


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [
        ("simulate", "--port", "99999"),
        ("simulate", "--port", "-1"),
        ("simulate", "--failure-rate", "2"),
        ("simulate", "--failure-rate", "nan"),
        ("simulate", "--max-queued", "0"),
        ("simulate", "--processing-seconds", "-1"),
    ],
)
def test_a_flag_out_of_its_range_is_one_line(
    command: str, flag: str, value: str, clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(_argv(command, flag, value))
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"argument {flag}: must be " in line, line


@pytest.mark.parametrize("field", [flag.field for flag in FLAGS])
def test_a_generate_flag_beyond_the_operations_limits_names_the_flag(
    field: str, clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert field in OUT_OF_LIMITS, f"write a value out of {field}'s limits in OUT_OF_LIMITS"
    flag = next(f.flag for f in FLAGS if f.field == field)
    (clean_env / "face.png").write_bytes(make_image())
    code = main(["generate", "face.png", "--demo", flag, OUT_OF_LIMITS[field]])
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"headshot-bot: {flag} must be "), line
    assert field not in line or field == flag.removeprefix("--")
    assert not (clean_env / "data").exists()  # refused before the service started


@pytest.mark.parametrize("host", ["no-such-host.invalid", "192.0.2.1"])
@pytest.mark.usefixtures("logging_kept")
def test_a_web_host_the_service_cannot_listen_on_names_web_host(
    host: str,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A name that does not resolve, and an address this machine does not have (TEST-NET-1).
    monkeypatch.setenv("WEB_HOST", host)
    (clean_env / "face.png").write_bytes(make_image())
    code = main(["generate", "face.png", "--demo", "--out", "shots"])
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = err.splitlines()
    assert line.startswith(f"headshot-bot: invalid setting WEB_HOST: cannot listen on {host}:")


@pytest.mark.parametrize(
    "env",
    [
        {"GPU_WORKER_HEARTBEAT_SECONDS": "15"},  # with the default timeout, 30 s
        {"GPU_WORKER_HEARTBEAT_SECONDS": "1", "GPU_WORKER_TIMEOUT_SECONDS": "2"},
    ],
)
def test_a_gpu_worker_timeout_within_two_heartbeats_names_the_timeout(
    env: dict[str, str], clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    (line,) = str(refused.value).splitlines()
    assert line.startswith("invalid setting GPU_WORKER_TIMEOUT_SECONDS: "), line
    assert "twice GPU_WORKER_HEARTBEAT_SECONDS" in line
    monkeypatch.setenv("GPU_WORKER_TIMEOUT_SECONDS", "2.1")
    monkeypatch.setenv("GPU_WORKER_HEARTBEAT_SECONDS", "1")
    assert load_settings().gpu_worker_timeout_seconds == 2.1
