"""The command menu Telegram shows, built from the command layer's definitions: everyone's
commands everywhere, and /admin also for group admins and in the owners' private chats; in
English for everyone, and in each language shipped for the people whose app runs in it.

Telegram commands are single words; "/admin quota set …" is typed as /admin with the rest as
its arguments, which the command layer reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from telegram import (
    Bot,
    BotCommand,
    BotCommandScope,
    BotCommandScopeAllChatAdministrators,
    BotCommandScopeChat,
    BotCommandScopeDefault,
)
from telegram.error import TelegramError

from bot.commands import GROUP_SUMMARIES, Access, CommandSpec
from bot.i18n import ENGLISH, N_, SHIPPED, _, speaking

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 256
CANCEL = N_("Stop what the bot is waiting for")


def menu_language(language: str) -> str | None:
    """Telegram's code for a catalogue's menus (ISO 639-1: pt_BR is "pt"); None: English, the
    menus every other language sees."""
    return None if language == ENGLISH else language.split("_", 1)[0]


def menus(
    specs: Iterable[CommandSpec], owner_chats: Iterable[int]
) -> list[tuple[BotCommandScope, list[BotCommand]]]:
    """Each scope with the commands it lists, in the language being written in."""
    everyone: list[BotCommand] = []
    moderators: list[BotCommand] = []
    for spec in specs:
        word = spec.path[0]
        if len(spec.path) == 1:
            listed = everyone if spec.access == Access.EVERYONE else moderators
            listed.append(BotCommand(word, _(spec.summary)[:MAX_DESCRIPTION]))
        elif not any(command.command == word for command in moderators):
            summary = GROUP_SUMMARIES.get(word)
            shown = _(summary) if summary else f"/{word} …"
            moderators.append(BotCommand(word, shown[:MAX_DESCRIPTION]))
    everyone.append(BotCommand("cancel", _(CANCEL)))
    scopes: list[tuple[BotCommandScope, list[BotCommand]]] = [
        (BotCommandScopeDefault(), everyone),
        (BotCommandScopeAllChatAdministrators(), everyone + moderators),
    ]
    scopes += [(BotCommandScopeChat(chat), everyone + moderators) for chat in owner_chats]
    return scopes


async def register(bot: Bot, specs: Iterable[CommandSpec], owner_chats: Iterable[int]) -> int:
    """Set each scope's menu in each language where it differs from what Telegram has; returns
    how many changed. A menu Telegram refuses (an owner who never opened a chat with the bot)
    is skipped."""
    specs, owner_chats = list(specs), list(owner_chats)
    changed = 0
    for language in SHIPPED:
        code = menu_language(language)
        with speaking(language):
            scoped = menus(specs, owner_chats)
        for scope, commands in scoped:
            try:
                current = await bot.get_my_commands(scope=scope, language_code=code)
                if list(current) == commands:
                    continue
                await bot.set_my_commands(commands, scope=scope, language_code=code)
            except TelegramError as exc:
                log.warning("Telegram command menu for %s not set: %s", scope.type, exc)
                continue
            changed += 1
    log.info("Telegram command menus: %d changed", changed)
    return changed
