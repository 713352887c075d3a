"""`headshot-bot`: generate, run, chat, migrate, models, simulate, gpu-worker. One module per
command; each registers its own parser."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bot.cli import chat, generate, gpu_worker, migrate, models, run, simulate
from bot.cli.common import CliError, OneLineParser, package_version
from bot.config import ConfigError, load_settings
from bot.event_loop import loop_runner
from bot.generation import RequestRefused

__all__ = ["CliError", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # A long-running command's loop is the operator's choice (EVENT_LOOP).
        choice = (
            load_settings().event_loop if getattr(args, "event_loop_setting", False) else "asyncio"
        )
        return loop_runner(choice)(args.handler(args))
    except (CliError, ConfigError, RequestRefused) as exc:
        print(f"headshot-bot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="headshot-bot", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (generate, run, chat, migrate, models, simulate, gpu_worker):
        command.register(commands)
    return parser
