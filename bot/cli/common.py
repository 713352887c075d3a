"""What the commands share: the one-line error, settings and logging, reading a file, and the
service (or an in-process simulator in demo mode)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NoReturn

from pydantic import HttpUrl, SecretStr

from bot.app import HeadshotApp, Overrides
from bot.cli.folders import write_problem
from bot.config import ConfigError, Settings, load_settings
from bot.logs import setup_logging

DEMO_KEY = "demo-key"
DEMO_PROCESSING_SECONDS = 1.5

# What `add_subparsers()` returns; argparse does not export its type.
Commands = Any


class CliError(Exception):
    """Ends the command with one line on stderr and a non-zero exit."""


class OneLineParser(argparse.ArgumentParser):
    """A wrong flag is one line too, like every other error: the usage is a --help away."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def ranged(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of `kind` from `low` to `high`."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if math.isnan(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be {noun} from {low:g} to {high:g} (got {text!r})"
            )
        return value

    return parse


def package_version() -> str:
    """The installed package's version (from its metadata, not from a copy in the code)."""
    try:
        return importlib.metadata.version("headshot-bot")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: run pip install -e . in the source folder)"


def settings(*, quiet: bool = False, data: bool = True) -> Settings:
    """Settings and logging. `quiet` commands print their own progress: warnings only. `data`:
    the command writes in DATA_DIR (the database, images, the pseudonym key)."""
    loaded = load_settings()
    problem = write_problem(loaded.data_dir) if data else None
    if problem:
        raise ConfigError(f"invalid setting DATA_DIR: {problem}")
    level = "WARNING" if quiet and loaded.log_level in ("DEBUG", "INFO") else loaded.log_level
    setup_logging(
        level, loaded.secrets(), log_format=loaded.log_format, replica=loaded.replica_name
    )
    return loaded


def read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CliError(f"no such {what} file: {path}") from None
    except OSError as exc:
        raise CliError(f"cannot read the {what} file {path}: {exc.strerror}") from None


@contextlib.asynccontextmanager
async def service(
    settings: Settings,
    *,
    demo: bool,
    web_port: int | None,
    service: bool = True,
    overrides: Overrides | None = None,
) -> AsyncIterator[HeadshotApp]:
    """The service (or, with `service=False`, only what one job needs), pointed at an
    in-process simulator in demo mode."""
    base = overrides or Overrides()
    if not demo:
        chosen = _with(base, web_port=web_port)
        async with HeadshotApp(settings, chosen, service=service) as app:
            yield app
        return
    from backends.modelslab.simulator import Simulator, SimulatorConfig

    simulator = Simulator(SimulatorConfig(processing_seconds=DEMO_PROCESSING_SECONDS))
    sim_url = await simulator.start()
    demo_settings = settings.model_copy(
        update={
            "modelslab_base_url": HttpUrl(sim_url),
            "modelslab_api_key": SecretStr(DEMO_KEY),
            "backend": "modelslab",
            "fallback_backend": "none",
        }
    )
    # The simulator runs beside us, so its webhooks can reach our server on loopback.
    app = HeadshotApp(
        demo_settings, _with(base, web_port=web_port, local_webhooks=True), service=service
    )
    try:
        await app.start()
    except BaseException:
        await simulator.stop()
        raise
    try:
        yield app
    finally:
        # The simulator first: a webhook it still had to send must not meet a closed server.
        await simulator.stop()
        await app.stop()


def _with(overrides: Overrides, **changes: Any) -> Overrides:
    return dataclasses.replace(overrides, **changes)


def add_demo_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo", action="store_true", help="use the built-in simulator, no key")
