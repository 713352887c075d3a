"""Command descriptions in every language shipped: discord.py asks a tree's translator for each of
Discord's locales when the commands are registered, and sends what it answers as
`description_localizations`. Names stay English (no `name_localizations`), as most bots keep
them: a command is typed the same in every server."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.i18n import ENGLISH, catalogue_for, translator

MAX_DESCRIPTION = 100

_DESCRIPTIONS = (
    app_commands.TranslationContextLocation.command_description,
    app_commands.TranslationContextLocation.group_description,
    app_commands.TranslationContextLocation.parameter_description,
)


class Descriptions(app_commands.Translator):
    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        if context.location not in _DESCRIPTIONS:
            return None
        return described(string.message, locale.value)


def described(description: str, locale: str) -> str | None:
    """A description in the catalogue a Discord locale reads; None where there is none (English:
    Discord shows the description itself)."""
    language = catalogue_for(locale)
    if language is None or language == ENGLISH:
        return None
    return translator(language).gettext(description)[:MAX_DESCRIPTION]
