"""A user's own things: styles, history, one job, delete, quota, forget, help."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from bot import replies
from bot.commands.context import Context
from bot.commands.parse import CommandError
from bot.commands.spec import COMMANDS, Access
from bot.generation import until_reset
from bot.i18n import _
from bot.replies import Reply
from bot.styles import STYLES
from bot.views import image_refs, job_summary, likeness
from storage.history import UserBusy
from storage.records import JobRecord

HISTORY_PAGE_SIZE = 5


async def styles(ctx: Context, options: dict[str, Any]) -> Reply:
    user = await ctx.known_user()
    policy = await ctx.policy(user.id if user else None)
    return replies.styles_list(list(STYLES.values()), policy.style_default)


async def history(ctx: Context, options: dict[str, Any]) -> Reply:
    page = options.get("page", 1)
    user = await ctx.known_user()
    if user is None:
        return replies.history_page([], page, 0)
    jobs, total = await ctx.services.history.page(
        user.id, offset=(page - 1) * HISTORY_PAGE_SIZE, limit=HISTORY_PAGE_SIZE
    )
    entries = [(job_summary(job), await _images(ctx, job)) for job in jobs]
    return replies.history_page(entries, page, max(1, math.ceil(total / HISTORY_PAGE_SIZE)))


async def show(ctx: Context, options: dict[str, Any]) -> Reply:
    job = await own_job(ctx, options["job"])
    outputs = await ctx.services.jobs.outputs(job.id)
    return replies.job_details(
        job_summary(job),
        image_refs(outputs, ctx.services.image_base_url),
        likeness(outputs, ctx.services.settings.identity_threshold),
    )


async def delete(ctx: Context, options: dict[str, Any]) -> Reply:
    job = await own_job(ctx, options["job"])
    if not job.state.finished:
        raise CommandError(replies.still_running(job.id))
    images = len(await ctx.services.jobs.outputs(job.id))
    deletion = await ctx.services.history.delete(job.id)
    if deletion is None:
        raise CommandError(replies.still_running(job.id))
    for key in deletion.store_keys:
        await ctx.services.store.delete(key)
    # The messages that showed the images go too, as far as each platform allows.
    removal = await ctx.services.removers.remove(deletion.posts)
    return replies.deleted(job.id, images, removal)


async def quota(ctx: Context, options: dict[str, Any]) -> Reply:
    # The record is made here if need be: someone who used /forget today still has today's use.
    user = await ctx.services.accounts.user(ctx.actor.platform, ctx.actor.user_id)
    policy = await ctx.policy(user.id)
    today = datetime.now(UTC).date()
    allowance = await ctx.services.accounts.allowance(
        user.id, daily_quota=policy.daily_quota, today=today
    )
    jobs = await ctx.services.history.active(user.id)
    positions = await ctx.services.engine.dispatcher.positions(job.id for job in jobs)
    active = [(job.id, str(job.state), positions.get(job.id)) for job in jobs]
    return replies.quota(
        daily_quota=policy.daily_quota,
        daily_left=allowance.daily_left,
        granted=allowance.granted,
        resets_in=until_reset(),
        active=active,
    )


async def forget(ctx: Context, options: dict[str, Any]) -> Reply:
    services = ctx.services
    user = await ctx.known_user()
    code = options.get("confirm")
    if code is None:
        if user is None:
            return replies.forget_nothing()
        _, jobs = await services.history.page(user.id, offset=0, limit=1)
        minutes = round(services.confirmations.ttl_seconds / 60)
        code = await services.confirmations.issue(ctx.subject(ctx.actor.user_id))
        return replies.forget_ask(code, jobs, minutes)
    if not await services.confirmations.redeem(code, ctx.subject(ctx.actor.user_id)):
        raise CommandError(replies.forget_expired())
    if user is None:
        return replies.forget_nothing()
    try:
        report = await services.history.forget(
            user.id,
            platform=ctx.actor.platform,
            platform_user_id=ctx.actor.user_id,
            subject=ctx.subject(ctx.actor.user_id),
            today=datetime.now(UTC).date(),
        )
    except UserBusy as busy:
        raise CommandError(replies.forget_busy(busy.active)) from None
    for key in report.store_keys:
        await services.store.delete(key)
    removal = await services.removers.remove(report.posts)
    return replies.forgotten(
        report.jobs, report.outputs, report.ledger_entries, report.settings, removal
    )


async def help_(ctx: Context, options: dict[str, Any]) -> Reply:
    moderator = ctx.is_owner or (ctx.in_community and ctx.actor.is_moderator)
    listed = [(s.name, _(s.summary)) for s in COMMANDS.values() if s.access == Access.EVERYONE]
    admin = [
        s.name.removeprefix("admin ")
        for s in COMMANDS.values()
        if s.access == Access.MODERATOR or (s.access == Access.OWNER and ctx.is_owner)
    ]
    return replies.help_text(listed, admin if moderator else [])


async def own_job(ctx: Context, ref: str) -> JobRecord:
    """One of the actor's own jobs by id or id prefix: anyone else's is "not found"."""
    user = await ctx.known_user()
    job = await ctx.services.history.find(user.id, ref.lower()) if user else None
    if job is None:
        raise CommandError(replies.no_such_job(ref))
    return job


async def _images(ctx: Context, job: JobRecord) -> tuple[Any, ...]:
    outputs = await ctx.services.jobs.outputs(job.id)
    return image_refs(outputs, ctx.services.image_base_url)
