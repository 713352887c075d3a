"""`headshot-bot chat`: the bot in this terminal, with you as its operator. No chat platform
token needed; with --demo no API key either."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bot.cli.common import Commands, add_demo_flag, service, settings
from bot.cli.outdir import check_out_folder, make_out_folder
from bot.config import Settings


def register(commands: Commands) -> None:
    chat = commands.add_parser(
        "chat",
        help="chat with the bot in this terminal (/headshot PATH, /history, /quota, /admin …)",
        description="Type the bot's chat commands; give images by their path "
        "(/headshot examples/astronaut.jpg). /help lists the commands, /quit leaves.",
    )
    chat.add_argument(
        "--out",
        type=Path,
        default=Path("out"),
        metavar="DIR",
        help="folder for the images shown (default: ./out)",
    )
    add_demo_flag(chat)
    chat.set_defaults(handler=_chat)


async def _chat(args: argparse.Namespace) -> int:
    # The launcher is where the layers are put together: the one place bot/ meets adapters/.
    from adapters.terminal import OPERATOR, ImageFolder, TerminalChat, stdin_lines

    chosen = _with_owner(settings(quiet=True), OPERATOR)
    check_out_folder(args.out)
    make_out_folder(args.out)
    folder = ImageFolder(args.out)
    # In demo mode any free port will do: the simulator sends its webhooks there.
    async with service(chosen, demo=args.demo, web_port=0 if args.demo else None) as app:
        chat = TerminalChat(app.commands, folder, demo=args.demo, locale=terminal_language())
        await chat.start()
        try:
            await chat.run(stdin_lines())
        finally:
            await chat.stop()
    return 0


def _with_owner(chosen: Settings, owner: str) -> Settings:
    """The person at the terminal runs the bot: an owner, whose admin commands act globally."""
    owners = ",".join([*chosen.owners, owner])
    return chosen.model_copy(update={"owner_ids": owners})


def terminal_language() -> str | None:
    """The terminal's language, as the C library reads it: LC_ALL, then LC_MESSAGES, then LANG
    (`C` and `POSIX` name none)."""
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name)
        if value:
            return value
    return None
