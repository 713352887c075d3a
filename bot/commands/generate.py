"""The generation commands (headshot, facegen, avatar, flux_headshot) and re-roll.

Everything that can refuse runs before a credit moves, cheapest first: the ban, the operation
being enabled here, the prompt's words, then the selfie (fetched and sanitised) and the quota,
which `GenerationService` checks in the same transaction that reserves the credits.
"""

from __future__ import annotations

from typing import Any

from backends.params import LIMITS, Operation
from bot import replies
from bot.commands.context import Context
from bot.commands.mine import own_job
from bot.commands.parse import CommandError
from bot.commands.spec import GENERATION_COMMANDS
from bot.fetch import FetchRefused
from bot.generation import GenerationRequest
from bot.policy import Policy
from bot.replies import Reply
from bot.safety import banned_phrase_in
from bot.styles import compose, get_style
from storage.imagestore import ImageNotFound


async def generate(ctx: Context, options: dict[str, Any], *, command: str) -> Reply:
    operation = GENERATION_COMMANDS[command]
    user = await ctx.known_user()
    policy = await ctx.policy(user.id if user else None)
    await _check_allowed(ctx, policy, operation, options.get("prompt"))
    style = get_style(options.pop("style", None) or policy.style_default)
    details = options.pop("prompt", None)
    selfie = await _selfie(ctx, options.pop("selfie", None), options.pop("selfie_url", None))
    pose = options.pop("pose_image", None)
    # The user's own knobs win over the style's defaults.
    generation_options = {**compose(style, details, operation), **options}
    job_id = await _queue(
        ctx, policy, operation, generation_options, selfie, pose, style.name, details
    )
    return replies.queued(job_id, str(operation), style.name)


async def reroll(ctx: Context, options: dict[str, Any]) -> Reply:
    job = await own_job(ctx, options["job"])
    operation = Operation(job.operation)
    policy = await ctx.policy(job.user_id)
    await _check_allowed(ctx, policy, operation, job.user_prompt)
    retention = ctx.services.settings.selfie_retention_seconds
    if job.selfie_key is None:
        raise CommandError(replies.selfie_gone(retention))
    try:
        selfie = await ctx.services.store.get(job.selfie_key)
        pose = await ctx.services.store.get(job.pose_key) if job.pose_key else None
    except ImageNotFound:
        raise CommandError(replies.selfie_gone(retention)) from None
    params = {k: v for k, v in job.params.items() if k != "operation"}
    params["seed"] = None  # a new one is drawn
    job_id = await _queue(
        ctx, policy, operation, params, selfie, pose, job.style, job.user_prompt, stored=True
    )
    return replies.queued(job_id, str(operation), job.style, reroll_of=job.id)


async def _check_allowed(
    ctx: Context, policy: Policy, operation: Operation, prompt: str | None
) -> None:
    ban = await ctx.ban()
    if ban is not None:
        raise CommandError(replies.banned(ban.reason))
    if str(operation) in policy.disabled_operations:
        raise CommandError(replies.operation_disabled(str(operation)))
    if prompt:
        phrase = banned_phrase_in(prompt, policy.banned_words)
        if phrase is not None:
            raise CommandError(replies.banned_word(phrase))


async def _selfie(ctx: Context, attached: bytes | None, url: str | None) -> bytes:
    if attached and url:
        raise CommandError(replies.two_selfies())
    if attached:
        return attached
    if not url:
        raise CommandError(replies.no_selfie())
    try:
        return await ctx.services.fetcher.fetch(url)
    except FetchRefused as exc:
        raise CommandError(str(exc)) from None


async def _queue(
    ctx: Context,
    policy: Policy,
    operation: Operation,
    options: dict[str, Any],
    selfie: bytes,
    pose: bytes | None,
    style: str | None,
    details: str | None,
    *,
    stored: bool = False,
) -> str:
    checker_type = policy.safety_level.checker_type
    if checker_type and "safety_checker_type" in LIMITS[operation].rules:
        options = {**options, "safety_checker_type": checker_type}
    options["safety_checker"] = True  # on for every job; moderators only choose how strict
    job = await ctx.services.generation.request(
        GenerationRequest(
            platform=ctx.actor.platform,
            platform_user_id=ctx.actor.user_id,
            operation=str(operation),
            options=options,
            selfie=selfie,
            pose_image=pose,
            platform_community_id=ctx.actor.community_id,
            daily_quota=policy.daily_quota,
            max_active=ctx.services.settings.max_active_per_user,
            style=style,
            user_prompt=details,
            images_sanitised=stored,
            deliver_to=ctx.deliver_to,
            request_key=ctx.request_key,
        )
    )
    return job.id
