"""Choosing the language the bot answers in: a person's own (/language), and a community's
(/admin language), which people whose app's language the bot does not speak read."""

from __future__ import annotations

from typing import Any

from bot import replies
from bot.commands.context import Actor, Context, Services
from bot.commands.parse import CommandError
from bot.i18n import catalogue_for, first_shipped, language_now, speaking
from bot.policy import Key
from bot.replies import Reply
from storage.records import PersonsSetting

# The option's word for "no choice of my own: my app's language again".
AUTOMATIC = "auto"


async def language(ctx: Context, options: dict[str, Any]) -> Reply:
    """/language [code]: show the language the person is answered in, choose one, or go back to
    their app's (`auto`)."""
    chosen = options.get("language")
    if chosen is None:
        return replies.language_shown(language_now())
    if chosen == AUTOMATIC:
        known = await ctx.known_user()
        if known is not None:
            await ctx.services.scoped.unset(community_id=None, user_id=known.id, key=Key.LANGUAGE)
        with speaking(await language_of(ctx.services, ctx.actor)):
            return replies.language_automatic(language_now())
    catalogue = _catalogue(chosen)  # refused before anything is written
    user = await ctx.services.accounts.user(ctx.actor.platform, ctx.actor.user_id)
    await ctx.services.scoped.set(
        community_id=None, user_id=user.id, key=Key.LANGUAGE, value=catalogue, by=ctx.actor.key
    )
    with speaking(catalogue):
        return replies.language_chosen(catalogue)


async def set_community_language(ctx: Context, options: dict[str, Any]) -> Reply:
    """/admin language <code>: the language of a community's people whose own is unknown, and of
    what the bot addresses to the community (in a DM, an owner sets everyone's)."""
    catalogue = _catalogue(options["language"])
    await ctx.services.scoped.set(
        community_id=ctx.community_id,
        user_id=None,
        key=Key.LANGUAGE,
        value=catalogue,
        audit=ctx.audit("language", catalogue),
    )
    return replies.community_language_set(catalogue, ctx.in_community)


async def language_of(services: Services, actor: Actor) -> str:
    """The language to answer a person in: their own choice (/language), else the one their
    platform says they read, else their community's (/admin language), else the operator's
    global one, else DEFAULT_LANGUAGE, else English."""
    chosen = await _chosen(services, actor)
    default = services.settings.default_language
    return first_shipped(chosen.own, actor.locale, chosen.community, chosen.everyone, default)


async def community_language(services: Services, actor: Actor) -> str:
    """The language of what is addressed to `actor`'s community (its audit log): the
    community's, else the operator's global one, else DEFAULT_LANGUAGE, else English."""
    chosen = await _chosen(services, actor)
    return first_shipped(chosen.community, chosen.everyone, services.settings.default_language)


async def _chosen(services: Services, actor: Actor) -> PersonsSetting:
    """The languages chosen for the actor, by them, their community and the operator."""
    return await services.scoped.for_person(
        Key.LANGUAGE,
        platform=actor.platform,
        platform_user_id=actor.user_id,
        platform_community_id=actor.community_id,
    )


def _catalogue(code: str) -> str:
    catalogue = catalogue_for(code)
    if catalogue is None:
        raise CommandError(replies.no_such_language(code))
    return catalogue
