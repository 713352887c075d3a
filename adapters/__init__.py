"""Chat platforms, one package each. `configured` is the one place that knows them all: the
launcher starts whichever have their settings (a token) present."""

from __future__ import annotations

from typing import Protocol

from bot.commands import CommandLayer
from bot.config import Settings
from bot.web import ChatWebhooks


class ChatAdapter(Protocol):
    """A connection to one chat platform, translating between it and the command layer."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def configured(
    layer: CommandLayer, settings: Settings, webhooks: ChatWebhooks
) -> list[ChatAdapter]:
    """An adapter for every platform whose token is set (each imports its library only then).
    Platforms that push updates over HTTP mount their receiver on `webhooks`."""
    adapters: list[ChatAdapter] = []
    if settings.discord_token is not None:
        from adapters.discord import DiscordAdapter

        adapters.append(DiscordAdapter(layer, settings))
    if settings.telegram_bot_token is not None:
        from adapters.telegram import TelegramAdapter

        adapters.append(TelegramAdapter(layer, settings, webhooks))
    return adapters
