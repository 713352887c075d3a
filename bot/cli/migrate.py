"""`headshot-bot migrate`: bring the database schema up to date."""

from __future__ import annotations

import argparse
import sys

from bot.cli.common import Commands, settings
from storage.migrate import upgrade


def register(commands: Commands) -> None:
    migrate = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(handler=_migrate)


async def _migrate(args: argparse.Namespace) -> int:
    await upgrade(settings().effective_database_url)
    print("headshot-bot: database is up to date", file=sys.stderr)
    return 0
