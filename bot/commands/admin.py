"""Moderation. A moderator acts on their own community's scope only, an owner in a DM on the
global scope; the scope is where the command runs, never an option, so no one can name another
community. Every change is written to the audit log in the transaction that makes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bot import replies
from bot.charts import stats_chart
from bot.commands.context import Context
from bot.commands.language import community_language
from bot.commands.parse import EVERYONE, CommandError
from bot.i18n import speaking
from bot.policy import Key
from bot.replies import Reply
from bot.safety import SafetyLevel, normalise_phrase
from bot.views import job_summary

AUDIT_PAGE_SIZE = 10
DEFAULT_STATS_DAYS = 7


async def quota_set(ctx: Context, options: dict[str, Any]) -> Reply:
    target, per_day = options["user"], options["per_day"]
    user_id = None
    if target != EVERYONE:
        user_id = (await ctx.services.accounts.user(ctx.actor.platform, target)).id
    await ctx.services.scoped.set(
        community_id=ctx.community_id,
        user_id=user_id,
        key=Key.DAILY_QUOTA,
        value=per_day,
        audit=ctx.audit("quota set", _target(ctx, target), per_day=per_day),
    )
    return replies.quota_set(target, per_day, ctx.in_community)


async def grant(ctx: Context, options: dict[str, Any]) -> Reply:
    target, credits = options["user"], options["credits"]
    if target == ctx.actor.user_id and not ctx.is_owner:
        raise CommandError(replies.not_yourself("grant credits to"))
    user = await ctx.services.accounts.user(ctx.actor.platform, target)
    await ctx.services.accounts.grant(
        user.id, credits, actor=ctx.actor.key, note=None, community_id=ctx.community_id
    )
    return replies.granted(target, credits)


async def ban(ctx: Context, options: dict[str, Any]) -> Reply:
    target = options["user"]
    if target == ctx.actor.user_id:
        raise CommandError(replies.not_yourself("ban"))
    changed = await ctx.services.bans.ban(
        ctx.subject(target),
        community_id=ctx.community_id,
        reason=options.get("reason"),
        audit=ctx.audit("ban", ctx.person(target), reason=options.get("reason")),
    )
    return replies.ban_result(target, changed, ctx.in_community)


async def unban(ctx: Context, options: dict[str, Any]) -> Reply:
    target = options["user"]
    bans = ctx.services.bans
    subject = ctx.subject(target)
    changed = await bans.unban(
        subject, community_id=ctx.community_id, audit=ctx.audit("unban", ctx.person(target))
    )
    remaining = await bans.find(subject, community_id=ctx.community_id)
    return replies.unban_result(target, changed, ctx.in_community, remaining is not None)


async def stats(ctx: Context, options: dict[str, Any]) -> Reply:
    days = options.get("days", DEFAULT_STATS_DAYS)
    now = datetime.now(UTC)
    since = now - timedelta(days=days)
    report = await ctx.services.stats.summary(ctx.community_id, since=since)
    daily = await ctx.services.stats.daily(ctx.community_id, since=since, until=now)
    chart = await stats_chart(daily, period_days=days, community=ctx.in_community)
    return replies.stats(report, days, ctx.in_community, chart)


async def enable(ctx: Context, options: dict[str, Any]) -> Reply:
    return await _switch(ctx, options["operation"], enabled=True)


async def disable(ctx: Context, options: dict[str, Any]) -> Reply:
    return await _switch(ctx, options["operation"], enabled=False)


async def _switch(ctx: Context, operation: str, *, enabled: bool) -> Reply:
    if (
        enabled
        and ctx.in_community
        and operation in await _global_list(ctx, Key.DISABLED_OPERATIONS)
    ):
        raise CommandError(replies.disabled_globally(operation))
    changed = await _put_in_own_list(
        ctx,
        Key.DISABLED_OPERATIONS,
        operation,
        present=not enabled,
        action="enable" if enabled else "disable",
    )
    return replies.operation_switched(operation, enabled, changed, ctx.in_community)


async def style_default(ctx: Context, options: dict[str, Any]) -> Reply:
    style = options["style"]
    await _set_own(ctx, Key.STYLE_DEFAULT, style, "style-default", style)
    return replies.style_default_set(style, ctx.in_community)


async def safety(ctx: Context, options: dict[str, Any]) -> Reply:
    level = SafetyLevel(options["level"])
    if ctx.in_community:
        floor = await _global_value(ctx, Key.SAFETY_LEVEL)
        floor_level = SafetyLevel(floor) if floor else SafetyLevel.STANDARD
        if level.rank < floor_level.rank:
            raise CommandError(replies.safety_looser(floor_level))
    await _set_own(ctx, Key.SAFETY_LEVEL, str(level), "safety", str(level))
    return replies.safety_set(level, ctx.in_community)


async def banned_words_add(ctx: Context, options: dict[str, Any]) -> Reply:
    return await _banned_words_change(ctx, options["word"], add=True)


async def banned_words_remove(ctx: Context, options: dict[str, Any]) -> Reply:
    return await _banned_words_change(ctx, options["word"], add=False)


async def _banned_words_change(ctx: Context, word: str, *, add: bool) -> Reply:
    phrase = normalise_phrase(word)
    if not phrase:
        raise CommandError(replies.not_a_word())
    changed = await _put_in_own_list(
        ctx,
        Key.BANNED_WORDS,
        phrase,
        present=add,
        action="banned-words add" if add else "banned-words remove",
    )
    return replies.banned_words_changed(phrase, add, changed, ctx.in_community)


async def banned_words_list(ctx: Context, options: dict[str, Any]) -> Reply:
    own = await _own_list(ctx, Key.BANNED_WORDS)
    inherited = await _global_list(ctx, Key.BANNED_WORDS) if ctx.in_community else []
    return replies.banned_words_list(own, [w for w in inherited if w not in own])


async def jobs(ctx: Context, options: dict[str, Any]) -> Reply:
    failed_only = bool(options.get("failed", False))
    listings = await ctx.services.stats.recent_jobs(ctx.community_id, failed_only=failed_only)
    entries = [(job_summary(item.job), item.platform_user_id) for item in listings]
    return replies.jobs_list(entries, failed_only)


async def refund(ctx: Context, options: dict[str, Any]) -> Reply:
    ref = options["job"].lower()
    listing = await ctx.services.stats.find_job(ctx.community_id, ref)
    if listing is None:
        raise CommandError(replies.no_such_community_job(ref))
    job = listing.job
    if listing.platform_user_id == ctx.actor.user_id and not ctx.is_owner:
        raise CommandError(replies.not_yourself("refund"))
    credits = await ctx.services.jobs.refund(
        job.id, audit=ctx.audit("refund", ctx.person(listing.platform_user_id), job=job.id)
    )
    if credits:
        ctx.services.metrics.credits_refunded(credits)
    return replies.refund_result(job.id, listing.platform_user_id, credits, str(job.state))


async def workers(ctx: Context, options: dict[str, Any]) -> Reply:
    fleet = ctx.services.fleet
    if fleet is None or not fleet.has_gpu:
        return replies.no_gpu_workers()
    return replies.workers_list(await fleet.workers(), fleet.fallback)


async def audit(ctx: Context, options: dict[str, Any]) -> Reply:
    page = options.get("page", 1)
    entries = await ctx.services.audit.recent(
        ctx.community_id, limit=AUDIT_PAGE_SIZE, offset=(page - 1) * AUDIT_PAGE_SIZE
    )
    # The community's record, in the community's language (whoever of its moderators reads it).
    with speaking(await community_language(ctx.services, ctx.actor)):
        return replies.audit_page(entries, page)


# ---- the scope's own settings -------------------------------------------------------------


async def _scope_rows(ctx: Context, community_id: int | None) -> dict[str, Any]:
    rows = await ctx.services.scoped.for_context(user_id=None, community_id=community_id)
    return {
        row.key: row.value
        for row in rows
        if row.community_id == community_id and row.user_id is None
    }


async def _own_list(ctx: Context, key: Key) -> list[str]:
    return list((await _scope_rows(ctx, ctx.community_id)).get(key, []))


async def _global_list(ctx: Context, key: Key) -> list[str]:
    return list((await _scope_rows(ctx, None)).get(key, []))


async def _global_value(ctx: Context, key: Key) -> Any:
    return (await _scope_rows(ctx, None)).get(key)


async def _set_own(ctx: Context, key: Key, value: Any, action: str, target: str) -> None:
    await ctx.services.scoped.set(
        community_id=ctx.community_id,
        user_id=None,
        key=key,
        value=value,
        audit=ctx.audit(action, target),
    )


async def _put_in_own_list(
    ctx: Context, key: Key, item: str, *, present: bool, action: str
) -> bool:
    """Make `item` present in (or absent from) a list setting of this scope, atomically;
    whether that changed anything."""
    return await ctx.services.scoped.update_list(
        community_id=ctx.community_id,
        user_id=None,
        key=key,
        add=item if present else None,
        remove=None if present else item,
        audit=ctx.audit(action, item),
    )


def _target(ctx: Context, user: str) -> str:
    return EVERYONE if user == EVERYONE else ctx.person(user)
