"""Discord: slash commands, buttons and deliveries through discord.py (see `adapter.py`)."""

from adapters.discord.adapter import DiscordAdapter

__all__ = ["DiscordAdapter"]
