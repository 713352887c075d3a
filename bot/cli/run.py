"""`headshot-bot run`: the service, with every chat platform whose token is set."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator

from bot.app import HeadshotApp
from bot.cli.common import Commands, add_demo_flag, service, settings
from bot.collector import settle_after_start_up
from bot.event_loop import loop_name

log = logging.getLogger(__name__)

NO_PLATFORM = (
    "no chat platform token set: set DISCORD_TOKEN or TELEGRAM_BOT_TOKEN to connect Discord or "
    "Telegram, or try the bot in this terminal with `headshot-bot chat --demo`"
)


def register(commands: Commands) -> None:
    run = commands.add_parser("run", help="run the service: web server, dispatcher, poller")
    add_demo_flag(run)
    run.set_defaults(handler=_run, event_loop_setting=True)


async def _run(args: argparse.Namespace) -> int:
    chosen = settings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("event loop: %s", loop_name())
    # The address is logged once, by the app, as it starts listening.
    async with service(chosen, demo=args.demo, web_port=None) as app, _chat_adapters(app):
        settle_after_start_up()
        await stop.wait()
    return 0


@contextlib.asynccontextmanager
async def _chat_adapters(app: HeadshotApp) -> AsyncIterator[None]:
    """Every chat platform whose token is set, connected for as long as the service runs."""
    # The launcher is where the layers are put together: the one place bot/ meets adapters/.
    from adapters import configured

    adapters = configured(app.commands, app.settings, app.chat_webhooks)
    started = []
    try:
        for adapter in adapters:
            await adapter.start()
            started.append(adapter)
            print(f"headshot-bot: connected to {adapter.name}", file=sys.stderr)
        if not adapters:
            print(f"headshot-bot: {NO_PLATFORM}", file=sys.stderr)
        yield
    finally:
        for adapter in reversed(started):
            await adapter.stop()
