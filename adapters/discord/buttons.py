"""Buttons that survive restarts: each carries the command it runs as text in its custom id.

A press runs that text as a command of the person who pressed, so the command layer checks it
like any other (a forged custom id is refused like a mistyped command). Nothing about a button
is kept in memory, so buttons on messages sent before a restart work as well as new ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import discord

from bot.ui import Button, ButtonStyle

PREFIX = "hs:"
MAX_CUSTOM_ID = 100
BUTTONS_PER_MESSAGE = 25

_STYLES = {
    ButtonStyle.PRIMARY: discord.ButtonStyle.primary,
    ButtonStyle.SECONDARY: discord.ButtonStyle.secondary,
    ButtonStyle.DANGER: discord.ButtonStyle.danger,
}


class ButtonPresses(Protocol):
    """What a client that shows command buttons must offer: somewhere to send presses."""

    run_button: Callable[[discord.Interaction, str], Awaitable[None]]


class CommandButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=PREFIX + r"(?P<line>.+)"
):
    def __init__(
        self, line: str, *, label: str, style: ButtonStyle = ButtonStyle.SECONDARY
    ) -> None:
        custom_id = PREFIX + line
        if len(custom_id) > MAX_CUSTOM_ID:
            raise ValueError(f"button command too long for Discord: {line!r}")
        super().__init__(
            discord.ui.Button(label=label[:80], style=_STYLES[style], custom_id=custom_id)
        )
        self.line = line

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Button[Any],
        match: Any,
    ) -> CommandButton:
        # Rebuilt from the pressed message: the label is whatever it showed.
        return cls(match["line"], label=item.label or "")

    async def callback(self, interaction: discord.Interaction) -> None:
        client: ButtonPresses = interaction.client  # type: ignore[assignment]
        await client.run_button(interaction, self.line)


def view_of(buttons: Sequence[Button]) -> discord.ui.View | None:
    """A message's buttons, or None for none. With only dynamic items, discord.py keeps nothing
    per message, however many messages carry buttons."""
    if not buttons:
        return None
    view = discord.ui.View(timeout=None)
    for button in buttons[:BUTTONS_PER_MESSAGE]:
        view.add_item(CommandButton(button.encode(), label=button.label, style=button.style))
    return view
