"""The chat-facing command layer (see `layer.py`)."""

from bot.commands.context import Actor, CommandRequest
from bot.commands.layer import CommandLayer
from bot.commands.parse import ParsedCommand
from bot.commands.spec import (
    COMMANDS,
    GROUP_SUMMARIES,
    Access,
    CommandSpec,
    OptionSpec,
    OptionType,
)

__all__ = [
    "COMMANDS",
    "GROUP_SUMMARIES",
    "Access",
    "Actor",
    "CommandLayer",
    "CommandRequest",
    "CommandSpec",
    "OptionSpec",
    "OptionType",
    "ParsedCommand",
]
