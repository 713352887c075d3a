"""The command layer: every command a user or moderator can run, decided here, platform-neutral.

An adapter builds a `CommandRequest` (or hands over a typed line with `run_line`), renders the
`Reply` it gets back and, when the reply names a job, follows that job's events with `follow`.
It never decides anything itself: options, permissions, bans, quotas and wording are all here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from bot import replies
from bot.commands import admin, mine
from bot.commands.context import Actor, CommandRequest, Context, Services
from bot.commands.generate import generate, reroll
from bot.commands.language import language, language_of, set_community_language
from bot.commands.parse import (
    CommandError,
    ParsedCommand,
    check_options,
    read_line,
    unknown_command,
)
from bot.commands.spec import COMMANDS, GENERATION_COMMANDS, Access, CommandSpec, find_command
from bot.generation import RequestRefused, RequestRepeated
from bot.i18n import first_shipped, speaking
from bot.images import ImageRejected, check_upload
from bot.inbox import Inbox
from bot.interactions import SEALING_PURPOSE, DeferredInteractions
from bot.jobs.events import JobEvent
from bot.posts import PostRemover
from bot.replies import Reply
from bot.styles import STYLES
from bot.turns import SpacedTurns
from bot.ui import ImageRef
from bot.waits import Waits
from storage.coordination import taking_turns
from storage.records import PendingDelivery, Post
from storage.sealing import Sealer

log = logging.getLogger(__name__)

# Whom the texts being written answer (an actor's key), set by `CommandLayer.answering`.
_ANSWERING: ContextVar[str | None] = ContextVar("answering", default=None)

Handler = Callable[[Context, dict[str, Any]], Awaitable[Reply]]

HANDLERS: dict[str, Handler] = {
    **{name: functools.partial(generate, command=name) for name in GENERATION_COMMANDS},
    "styles": mine.styles,
    "history": mine.history,
    "show": mine.show,
    "reroll": reroll,
    "delete": mine.delete,
    "quota": mine.quota,
    "forget": mine.forget,
    "help": mine.help_,
    "language": language,
    "admin quota set": admin.quota_set,
    "admin grant": admin.grant,
    "admin ban": admin.ban,
    "admin unban": admin.unban,
    "admin stats": admin.stats,
    "admin enable": admin.enable,
    "admin disable": admin.disable,
    "admin style-default": admin.style_default,
    "admin safety": admin.safety,
    "admin banned-words add": admin.banned_words_add,
    "admin banned-words remove": admin.banned_words_remove,
    "admin banned-words list": admin.banned_words_list,
    "admin jobs": admin.jobs,
    "admin refund": admin.refund,
    "admin audit": admin.audit,
    "admin workers": admin.workers,
    "admin language": set_community_language,
}


class CommandLayer:
    def __init__(self, services: Services) -> None:
        self.services = services
        lease = services.engine.lease
        # What chat platforms keep between updates, in the database: the same on every replica.
        self.waits = Waits(services.waits, lease)
        self.inbox = Inbox(services.inbox, lease)
        sealer = Sealer(services.pseudonyms.derived_key(SEALING_PURPOSE))
        self.interactions = DeferredInteractions(services.interactions, sealer, lease)
        self._turns = SpacedTurns(services.coordination)

    @property
    def commands(self) -> Mapping[str, CommandSpec]:
        return COMMANDS

    @contextlib.asynccontextmanager
    async def answering(self, actor: Actor) -> AsyncIterator[str]:
        """Answer `actor` inside the block: every text written there, and in tasks started
        there (the job it follows), is in their language (see `language_of`). Never fails for
        want of the database: then it is their app's language, else the default."""
        try:
            language = await self.language_of(actor)
        except Exception:
            log.exception("the person's own language could not be read: their app's is used")
            language = first_shipped(actor.locale, self.services.settings.default_language)
        token = _ANSWERING.set(actor.key)
        try:
            with speaking(language):
                yield language
        finally:
            _ANSWERING.reset(token)

    async def language_of(self, actor: Actor) -> str:
        """The language `actor` is answered in (see `language.language_of`)."""
        return await language_of(self.services, actor)

    def noted_language(self, language: str | None) -> str:
        """The language to finish something in that was asked for earlier (a result still
        owed, a wait that ran out): the asker's, noted with it (None: not noted)."""
        return first_shipped(language, self.services.settings.default_language)

    async def handle(self, request: CommandRequest) -> Reply:
        """Run one command, in the language of the person running it. Every refusal is a
        private reply, and a refused command changed nothing: all checks run before anything
        is written."""
        if _ANSWERING.get() == request.actor.key:
            return await self._handle(request)
        async with self.answering(request.actor):
            return await self._handle(request)

    async def _handle(self, request: CommandRequest) -> Reply:
        spec = find_command(request.command)
        if spec is None:
            return replies.refused(unknown_command(request.command))
        try:
            # Who may run it first: a member learns nothing about an admin command's options.
            _check_access(spec, request.actor, self._is_owner(request.actor))
            options = check_options(spec, request.options)
            ctx = await self._context(request)
            return await HANDLERS[spec.name](ctx, options)
        except (CommandError, RequestRefused) as refusal:
            return replies.refused(str(refusal))
        except RequestRepeated as repeated:
            return replies.queued_before(repeated.job_id)
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("command /%s failed (ref %s)", spec.name, reference)
            return replies.refused(replies.internal_error(reference))

    async def run_line(
        self,
        actor: Actor,
        text: str,
        attachments: Mapping[str, bytes] | None = None,
        *,
        deliver_to: Mapping[str, Any] | None = None,
        request_key: str | None = None,
    ) -> Reply:
        """Run a command typed as text ("/admin quota set everyone 10")."""
        if _ANSWERING.get() != actor.key:
            async with self.answering(actor):
                return await self.run_line(
                    actor,
                    text,
                    attachments,
                    deliver_to=deliver_to,
                    request_key=request_key,
                )
        try:
            read = read_line(text, attachments=attachments)
        except CommandError as refusal:
            return replies.refused(str(refusal))
        return await self.handle(
            CommandRequest(actor, read.spec.name, read.options, deliver_to, request_key)
        )

    def command_of_line(self, text: str) -> CommandSpec | None:
        """The command a typed line (or a button's text) would run; None if it names none."""
        read = self.read_line(text)
        return None if read is None else read.spec

    def read_line(self, text: str) -> ParsedCommand | None:
        """A typed line's command and its options as typed (unchecked: `handle` checks them);
        None if the line cannot be read, which running it explains."""
        try:
            return read_line(text)
        except CommandError:
            return None

    def style_choices(self) -> list[tuple[str, str]]:
        """The style presets as (name, title), for platforms that offer them as buttons."""
        return [(style.name, style.shown_title()) for style in STYLES.values()]

    async def follow(self, job_id: str) -> AsyncIterator[JobEvent]:
        """A job's events until it ends: where it stands now, then every change.

        Safe to call at any time, even after a restart or after the job has ended: a finished
        job yields its final event, rebuilt from the database.
        """
        services = self.services
        subscription = services.events.watch(job_id)  # before reading, so nothing is missed
        try:
            job = await services.jobs.get(job_id)
            if job is None or job.deleted_at is not None:
                return
            if job.state.finished:
                yield await services.engine.relay.final_event(job)
                return
            now = await services.engine.current_event(job)
            del job  # a follower may wait for hours behind a long queue: hold no record
            if now is not None:
                yield now
            async for event in subscription:
                yield event
        finally:
            subscription.close()

    # ---- what adapters need besides commands ----------------------------------------------

    def check_upload(
        self,
        content_type: str | None,
        size: int,
        platform_limit: int | None,
        *,
        subject: str = "selfie",
    ) -> Reply | None:
        """A refusal for an attached image, judged from what the platform says about it before
        anything is downloaded or reserved; None when it may go on to the full check."""
        limit = self.services.settings.max_upload_bytes
        if platform_limit is not None:
            limit = min(limit, platform_limit)
        try:
            check_upload(content_type, size, max_bytes=limit, subject=subject)
        except ImageRejected as exc:
            return replies.refused(exc.shown())
        return None

    async def image(self, image: ImageRef) -> bytes:
        """An image's bytes, for platforms that are sent files rather than links."""
        return await self.services.store.get(image.content_key)

    async def undelivered(self, platform: str) -> list[PendingDelivery]:
        """The results this platform still owes that no process is showing (theirs stopped or
        died), with the targets it noted: now this process's to show."""
        return await self.services.deliveries.claim(platform, self.services.engine.lease)

    @property
    def claim_interval(self) -> float:
        """How often an adapter looks for results no process is showing any more."""
        return self.services.engine.lease.seconds / 3

    async def deliver_instead(self, job_id: str, deliver_to: Mapping[str, Any]) -> None:
        """Where a queued job's result is to be shown, now that the adapter knows better (the
        message it answered with was sent after the job was queued)."""
        await self.services.deliveries.retarget(job_id, deliver_to)

    async def may_show(self, job_id: str) -> bool:
        """Just before showing a job's result: True if this process is the one to show it;
        False if another process is showing it (it took the result over while this one
        stalled) or has shown it."""
        return await self.services.deliveries.take_to_show(job_id, self.services.engine.lease)

    async def delivered(self, job_id: str) -> None:
        """The result has been shown. If another process had recorded showing it too, the user
        got it twice: logged, and counted in the audit log."""
        owner = self.services.engine.lease.owner
        if not await self.services.deliveries.done(job_id, shown_by=owner):
            log.warning("job %s: its result was shown by another process as well", job_id)

    async def posted(self, job_id: str, posts: Sequence[Post]) -> None:
        """Messages now show this job's images: noted, to be removed with the job. Ones posted
        after the job was deleted are removed at once. Never raises: the post is made."""
        try:
            if not await self.services.posts.record(job_id, posts):
                await self.services.removers.remove(posts)
        except Exception:
            log.exception("job %s: %d posted message(s) not noted", job_id, len(posts))

    def remove_posts_with(self, platform: str, remover: PostRemover) -> None:
        """How this platform's messages are removed when their job goes (an adapter's start)."""
        self.services.removers.register(platform, remover)

    def stop_removing_posts(self, platform: str, remover: PostRemover) -> None:
        """The adapter stops: its platform's messages can no longer be removed here."""
        self.services.removers.unregister(platform, remover)

    async def hold(self, work: str) -> bool:
        """Take work that only one of the processes sharing the database may do for as long as
        it runs (long-polling a chat platform): False if another one holds it."""
        return await self.services.coordination.try_lock(work)

    async def let_go(self, work: str) -> None:
        await self.services.coordination.unlock(work)

    def one_at_a_time(self, work: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Work that the processes sharing the database do in turn, never two at once (a chat
        platform's command menus and webhook address, set at each start)."""
        return taking_turns(self.services.coordination, work)

    async def take_turn(self, work: str, *, keep_for: float) -> None:
        """Work the processes sharing the database space out in time (a chat platform's
        session starts): returns when it is this process's turn, kept `keep_for` seconds from
        now. No other turn at `work` starts sooner, in any process."""
        await self._turns.take(work, keep_for=keep_for)

    async def replicas(self) -> int:
        """How many replicas run on the database now, this one included: a chat platform's
        global limits are shared among them."""
        return await self.services.coordination.live_replicas()

    async def aclose(self) -> None:
        """Let go of the turns still kept (the process is stopping)."""
        await self._turns.aclose()

    def _is_owner(self, actor: Actor) -> bool:
        return self.services.settings.is_owner(actor.platform, actor.user_id)

    async def _context(self, request: CommandRequest) -> Context:
        services, actor = self.services, request.actor
        community_id = None
        if actor.community_id is not None:
            community_id = await services.accounts.find_community(
                actor.platform, actor.community_id
            ) or await services.accounts.community(actor.platform, actor.community_id)
        return Context(
            services=services,
            actor=actor,
            is_owner=self._is_owner(actor),
            community_id=community_id,
            deliver_to=request.deliver_to,
            request_key=request.request_key,
        )


def _check_access(spec: CommandSpec, actor: Actor, is_owner: bool) -> None:
    if spec.access == Access.EVERYONE or is_owner:
        return
    if spec.access == Access.OWNER:
        raise CommandError(replies.owners_only(spec.name))
    if actor.community_id is None:
        raise CommandError(replies.owners_only_in_dm())
    if not actor.is_moderator:
        raise CommandError(replies.not_moderator())
