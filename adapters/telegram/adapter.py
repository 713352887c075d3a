"""The Telegram adapter: messages and button presses in, the command layer's replies and job
events out, through python-telegram-bot. It translates; the command layer decides.

A selfie comes the ways people send one: a photo (or an image sent as a file) with
`/headshot [style] [prompt]` as its caption, `/headshot` as a reply to their photo, or
`/headshot` alone, after which the bot asks for the photo. Without a style, the styles are
offered as buttons. Updates arrive by long polling, or, when PUBLIC_BASE_URL is set, as
Telegram's webhook posts to our own web server, each checked against a secret; either way each
is kept in the database until it has been handled (`receiving.py`). What the bot waits for from
someone (a photo, a style) is kept there too (`waiting.py`): any replica may get the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from telegram import CallbackQuery, ForceReply, Message, Update
from telegram import User as TelegramUser
from telegram.constants import ChatMemberStatus, ChatType
from telegram.error import BadRequest, Forbidden, InvalidToken, TelegramError
from telegram.ext import (
    Application,
    BaseRateLimiter,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from adapters.delivery import keep_taking_over_deliveries, take_over_deliveries
from adapters.telegram.delivery import (
    EDIT_INTERVAL,
    PLATFORM,
    PROGRESS_EDITS_PER_SECOND,
    EditBudget,
    JobDelivery,
    Target,
)
from adapters.telegram.incoming import (
    Sender,
    attached_file,
    command_line,
    reply_subject,
    sender_of,
)
from adapters.telegram.outgoing import (
    MAX_ALERT,
    MAX_CAPTION,
    MAX_TEXT,
    chart_upload,
    command_of_press,
    cut,
    is_media,
    keyboard,
    pick_keyboard,
    pick_of_press,
    send,
    send_all,
    uploads,
)
from adapters.telegram.pacing import SharedRateLimiter, keep_taking_share, take_share
from adapters.telegram.posts import TelegramPostRemover, posts_of
from adapters.telegram.receiving import Receiver
from adapters.telegram.registration import register
from adapters.telegram.waiting import FileRef, Note, Request, keep_announcing_ended_waits
from adapters.telegram.watching import CountedRequests
from bot import replies
from bot.commands import Access, Actor, CommandLayer, CommandSpec
from bot.config import ConfigError, Settings
from bot.i18n import language_now, speaking
from bot.replies import Reply
from bot.waits import Wait
from bot.web import ChatWebhooks

log = logging.getLogger(__name__)

# Bots may download files of up to 20 MB from Telegram.
DOWNLOAD_LIMIT = 20 * 1024 * 1024
ALLOWED_UPDATES = ["message", "callback_query"]
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
POLL_TIMEOUT = 30
# What only one replica may do at a time: long-poll Telegram for updates.
POLLING = "telegram-polling"
_ADMIN_STATUSES = (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)


class TelegramAdapter:
    name = "Telegram"

    def __init__(
        self,
        layer: CommandLayer,
        settings: Settings,
        webhooks: ChatWebhooks,
        *,
        edit_interval: float = EDIT_INTERVAL,
        rate_limiter: BaseRateLimiter[Any] | None = None,
    ) -> None:
        if settings.telegram_bot_token is None:
            raise ConfigError("invalid setting TELEGRAM_BOT_TOKEN: it is not set")
        self.layer = layer
        self._settings = settings
        self._token = settings.telegram_bot_token.get_secret_value()
        self._webhooks = webhooks
        self._edit_interval = edit_interval
        # Telegram's flood limits (30 messages a second, 20 a minute per group), this
        # replica's share of them, waited for rather than hit; a flood-control answer is waited
        # out and the request made again.
        self.rate_limiter = rate_limiter or SharedRateLimiter(max_retries=3)
        self._edit_budget = EditBudget(PROGRESS_EDITS_PER_SECOND)
        self._sharing: asyncio.Task[None] | None = None
        # The first words of this bot's commands, and Telegram's own two.
        self._words = {spec.path[0] for spec in layer.commands.values()} | {"cancel", "start"}
        self._deliveries: dict[str, asyncio.Task[None]] = {}
        self._taking_over: asyncio.Task[None] | None = None
        self._announcing: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._application: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._receiver: Receiver | None = None
        self._webhook_path: str | None = None
        self._polling = False
        self._remover: TelegramPostRemover | None = None

    @property
    def application(self) -> Application[Any, Any, Any, Any, Any, Any]:
        if self._application is None:
            raise RuntimeError("the Telegram adapter is not started")
        return self._application

    @property
    def receiver(self) -> Receiver:
        if self._receiver is None:
            raise RuntimeError("the Telegram adapter is not started")
        return self._receiver

    @property
    def webhook_secret(self) -> str:
        """The secret Telegram sends with each webhook post: derived from the token, so it is
        the same after a restart and secret as long as the token is."""
        return hmac.new(self._token.encode(), b"headshot-bot webhook", hashlib.sha256).hexdigest()

    async def start(self) -> None:
        """Log in, set the command menus, resume owed deliveries, start receiving updates."""
        settings = self._settings
        api = str(settings.telegram_api_base).rstrip("/")
        webhook = settings.public_base_url is not None
        if webhook:
            self._webhooks.expect(PLATFORM)
        # Updates come through the inbox (`Receiver`), not python-telegram-bot's own updater.
        application = (
            Application.builder()
            .token(self._token)
            .base_url(f"{api}/bot")
            .base_file_url(f"{api}/file/bot")
            .rate_limiter(CountedRequests(self.rate_limiter, self.layer.services.metrics))
            .updater(None)
            .build()
        )
        application.add_handler(
            MessageHandler(
                filters.UpdateType.MESSAGE & (filters.ChatType.PRIVATE | filters.ChatType.GROUPS),
                self._on_message,
            )
        )
        application.add_handler(CallbackQueryHandler(self._on_press))
        application.add_error_handler(_log_error)
        try:
            await application.initialize()
        except InvalidToken:
            raise ConfigError("invalid setting TELEGRAM_BOT_TOKEN: Telegram refused it") from None
        self._application = application
        # Deleting a job removes its messages, whichever replica posted them.
        self._remover = TelegramPostRemover(application.bot)
        self.layer.remove_posts_with(PLATFORM, self._remover)
        try:
            shares = [self._edit_budget.share]
            if isinstance(self.rate_limiter, SharedRateLimiter):
                shares.append(self.rate_limiter.share)
            await take_share(self.layer, *shares)
            self._sharing = asyncio.create_task(
                keep_taking_share(self.layer, *shares), name="telegram-share"
            )
            owners = [
                int(owner.partition(":")[2])
                for owner in settings.owners
                if owner.startswith(f"{PLATFORM}:") and owner.partition(":")[2].isdigit()
            ]
            async with self.layer.one_at_a_time("telegram-setup"):
                await register(application.bot, self.layer.commands.values(), owners)
            await take_over_deliveries(self.layer, PLATFORM, Target.from_json, self._follow)
            self._taking_over = asyncio.create_task(
                keep_taking_over_deliveries(self.layer, PLATFORM, Target.from_json, self._follow),
                name="telegram-take-over",
            )
            self._announcing = asyncio.create_task(
                keep_announcing_ended_waits(self.layer, PLATFORM, self._wait_ended),
                name="telegram-ended-waits",
            )
            await application.start()
            self._receiver = Receiver(application, self.layer, self._dropped)
            await self._receiver.start()
            if webhook:
                self._webhook_path = self._webhooks.mount(PLATFORM, self._receive)
                assert settings.public_base_url is not None
                url = str(settings.public_base_url).rstrip("/") + self._webhook_path
                async with self.layer.one_at_a_time("telegram-setup"):
                    await application.bot.set_webhook(
                        url, secret_token=self.webhook_secret, allowed_updates=ALLOWED_UPDATES
                    )
            else:
                # Telegram hands each update to one poller: a second one would take updates
                # from the first, and neither would see them all.
                if not await self.layer.hold(POLLING):
                    raise ConfigError(
                        "invalid setting PUBLIC_BASE_URL: another replica already long-polls "
                        "Telegram on this database; set PUBLIC_BASE_URL (webhook mode) to run "
                        "several replicas"
                    )
                self._polling = True
                self._poller = asyncio.create_task(
                    self._receiver.poll(POLL_TIMEOUT, ALLOWED_UPDATES), name="telegram-polling"
                )
            if self.layer.services.readiness is not None:
                self.layer.services.readiness.gateway(PLATFORM, self._receiving)
        except BaseException:
            await self.stop()
            raise

    def _receiving(self) -> bool:
        """Updates reach this replica: its webhook is mounted, or its poller runs (`/readyz`).
        A poller that cannot reach Telegram keeps trying, and says so in the log."""
        if self._webhook_path is not None:
            return True
        return self._poller is not None and not self._poller.done()

    async def stop(self) -> None:
        """Stop receiving, stop following jobs (what is owed stays noted), disconnect."""
        if self.layer.services.readiness is not None:
            self.layer.services.readiness.drop_gateway(PLATFORM)
        if self._webhook_path is not None:
            self._webhooks.unmount(PLATFORM)
            self._webhook_path = None
        application = self._application
        if application is None:
            return
        if self._remover is not None:
            self.layer.stop_removing_posts(PLATFORM, self._remover)
            self._remover = None
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        if self._polling:
            await self.layer.let_go(POLLING)
            self._polling = False
        if self._receiver is not None:
            await self._receiver.stop()
            self._receiver = None
        if application.running:
            await application.stop()
        loops = [self._taking_over, self._announcing, self._sharing]
        tasks = [*self._deliveries.values(), *(task for task in loops if task is not None)]
        self._taking_over = self._announcing = self._sharing = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await application.shutdown()
        self._application = None

    # ---- webhook mode ---------------------------------------------------------------------

    async def _receive(self, request: web.Request) -> web.Response:
        """One update posted by Telegram. Without the right secret: 403, nothing read."""
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, self.webhook_secret.encode()):
            raise web.HTTPForbidden()
        try:
            data = await request.json()
            update = Update.de_json(data, self.application.bot) if isinstance(data, dict) else None
        except web.HTTPRequestEntityTooLarge:
            raise  # over the body cap: a 413 says so, a 400 would blame the update's shape
        except Exception:  # whatever the body, it is not an update: python-telegram-bot's
            update = None  # parser raises what it meets (TypeError, KeyError, AttributeError…)
        if update is None:
            raise web.HTTPBadRequest(text="not a Telegram update")
        await self.receiver.take(update, data)  # in the inbox before Telegram hears 200
        return web.Response()

    # ---- messages -------------------------------------------------------------------------

    async def _on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None:
            return
        sender = sender_of(message)
        if sender is None:
            return
        async with (
            self.layer.answering(_asker(message.chat_id, sender, message.from_user)),
            self._answering(message.chat_id, message.message_id),
        ):
            await self._message(message, sender, self.receiver.key(update))

    async def _message(self, message: Message, sender: Sender, key: str) -> None:
        """One message, handled as the update `key` (see `Receiver.key`)."""
        chat_id = message.chat_id
        line = command_line(message, self.application.bot.username)
        if line is None:
            waits = self.layer.waits
            wait = await waits.photo_awaited(PLATFORM, str(chat_id), str(sender.id), key=key)
            if wait is not None and await self._photo_arrived(message, wait, key):
                return
            if message.chat.type == ChatType.PRIVATE:
                # In a private chat, a photo on its own is a request for a headshot, and
                # anything else a question about what the bot does.
                file = attached_file(message)
                line = "/headshot" if file is not None and file.is_image_message else "/help"
                await self._command(message, sender, line, key)
            return
        word = line.split(maxsplit=1)[0]
        if message.chat.type != ChatType.PRIVATE and not self._ours(word, message):
            return  # another bot's command, in a group with several
        if word == "/cancel":
            ended = await self.layer.waits.cancel(PLATFORM, str(chat_id), str(sender.id))
            text = replies.cancelled() if ended else replies.nothing_to_cancel()
            await send(self.application.bot, chat_id, text, reply_to=message.message_id)
            return
        # Telegram's own first command: what the bot does.
        line = "/help" if word == "/start" else line
        # A new command replaces the wait for a photo.
        await self.layer.waits.cancel(PLATFORM, str(chat_id), str(sender.id), photo_only=True)
        await self._command(message, sender, line, key)

    async def _dropped(self, update: Update) -> None:
        """An update every process handling it died on (`bot.inbox`): its sender hears that it
        failed, and nothing of it is handled."""
        message = update.message
        sender = None if message is None else sender_of(message)
        if message is None or sender is None:
            return
        reference = secrets.token_hex(4)
        log.error("update %s was dropped unhandled (ref %s)", update.update_id, reference)
        async with self.layer.answering(_asker(message.chat_id, sender, message.from_user)):
            text = replies.internal_error(reference)
            await send(self.application.bot, message.chat_id, text, reply_to=message.message_id)

    def _ours(self, word: str, message: Message) -> bool:
        """Whether a command is this bot's: one of its words, or addressed to it by name."""
        if word.removeprefix("/") in self._words:
            return True
        first = (message.text or message.caption or "").split(maxsplit=1)[0]
        return first.lower().endswith(f"@{self.application.bot.username.lower()}")

    async def _command(self, message: Message, sender: Sender, line: str, key: str) -> None:
        read = self.layer.read_line(line)
        spec = read.spec if read is not None else None
        subject = reply_subject(message, sender)
        if subject is not None and spec is not None and spec.option("user") and "user=" not in line:
            # A moderator points at someone by replying to their message: the other words
            # are then the command's other options.
            line = f"{line} user={subject}"
        request = Request(
            line, message.chat_id, sender.id, message.message_id, language=language_now()
        )
        if spec is not None and spec.takes_selfie:
            await self._selfie_command(message, sender, request, key)
        elif spec is not None and not spec.private:
            await self._queue(request, key)
        else:
            actor = await self._actor(message.chat_id, sender, spec)
            reply = await self.layer.run_line(actor, line, request_key=key)
            await self._answer(message.chat_id, sender, reply, reply_to=message.message_id)

    async def _selfie_command(
        self, message: Message, sender: Sender, request: Request, key: str
    ) -> None:
        selfie = attached_file(message)
        replied = message.reply_to_message
        if selfie is None and replied is not None and attached_file(replied) is not None:
            if sender_of(replied) != sender:
                await self._refuse(request, replies.not_your_photo())
                return
            selfie = attached_file(replied)
        read = self.layer.read_line(request.line)
        if selfie is None and read is not None and "selfie_url" not in read.options:
            text = replies.send_selfie(read.spec.name, self._settings.telegram_wait_seconds)
            # In a group the bot sees only commands and replies to it (privacy mode): have the
            # person's app answer the question as a reply.
            force = ForceReply(selective=True) if request.chat_id < 0 else None
            prompt = await send(
                self.application.bot, request.chat_id, text, markup=force, reply_to=request.reply_to
            )
            await self.layer.waits.for_photo(
                PLATFORM,
                str(request.chat_id),
                str(request.sender_id),
                Note(request, prompt.message_id).to_json(),
                seconds=self._settings.telegram_wait_seconds,
            )
            return
        await self._with_selfie(dataclasses.replace(request, selfie=selfie), key)

    async def _photo_arrived(self, message: Message, wait: Wait, key: str) -> bool:
        """A message from someone the bot is waiting on for a photo; False if the wait was
        over by the time the photo came (the message is then a message like any other)."""
        chat_id = message.chat_id
        waiting = Note.of(wait).request
        file = attached_file(message)
        if file is None:
            if message.chat.type == ChatType.PRIVATE:
                spec = self.layer.command_of_line(waiting.line)
                name = spec.name if spec is not None else "headshot"
                text = replies.send_selfie(name, self._settings.telegram_wait_seconds)
                await send(self.application.bot, chat_id, text, reply_to=message.message_id)
            return True
        refusal = self._selfie_refusal(file)
        if refusal is not None:  # said so; still waiting for a photo
            await send(self.application.bot, chat_id, refusal, reply_to=message.message_id)
            return True
        if not await self.layer.waits.take(wait, key=key):
            return False
        await self._with_selfie(
            dataclasses.replace(waiting, selfie=file, reply_to=message.message_id), key
        )
        return True

    def _selfie_refusal(self, selfie: FileRef) -> str | None:
        """Why a file cannot be a selfie, judged from what Telegram says of it; None if it may
        be one (the full check comes after the download)."""
        if not selfie.is_image_message:
            return replies.not_a_selfie(selfie.kind)
        refusal = self.layer.check_upload(selfie.content_type, selfie.size or 0, DOWNLOAD_LIMIT)
        return None if refusal is None else refusal.text

    async def _with_selfie(self, request: Request, key: str) -> None:
        """Check the selfie as Telegram describes it, ask for a style if none was given, and
        queue the job."""
        refusal = None if request.selfie is None else self._selfie_refusal(request.selfie)
        if refusal is not None:
            await self._refuse(request, refusal)
            return
        read = self.layer.read_line(request.line)
        if (
            read is not None
            and read.spec.option("style") is not None
            and "style" not in read.options
        ):
            token = self.layer.waits.new_token()
            markup = pick_keyboard(token, self.layer.style_choices(), replies.default_style_label())
            prompt = await send(
                self.application.bot,
                request.chat_id,
                replies.pick_style(read.spec.name),
                markup=markup,
                reply_to=request.reply_to,
            )
            await self.layer.waits.for_choice(
                token,
                PLATFORM,
                str(request.chat_id),
                str(request.sender_id),
                Note(request, prompt.message_id).to_json(),
                seconds=self._settings.telegram_wait_seconds,
            )
            return
        await self._queue(request, key)

    async def _queue(self, request: Request, key: str, status_id: int | None = None) -> None:
        """Run a command that may queue a job. A status message shows at once; it is edited
        into the command's answer and then into the job's progress."""
        bot = self.application.bot
        chat_id = request.chat_id
        if status_id is None:
            status = await send(bot, chat_id, replies.working(), reply_to=request.reply_to)
            status_id = status.message_id
        else:
            await self._edit(chat_id, status_id, replies.working())
        attachments: dict[str, bytes] = {}
        if request.selfie is not None:
            download = await self._download(request.selfie)
            if isinstance(download, Reply):
                await self._edit(chat_id, status_id, download.text)
                return
            attachments["selfie"] = download
        target = Target(chat_id, request.sender_id, request.reply_to, status_id)
        actor = _actor(chat_id, request.sender_id, is_moderator=False)
        reply = await self.layer.run_line(
            actor, request.line, attachments, deliver_to=target.to_json(), request_key=key
        )
        if reply.job_id is not None:
            self._follow(reply.job_id, target)  # first: from here on the job must be shown
        await self._edit_status(chat_id, status_id, reply)

    async def _edit_status(self, chat_id: int, status_id: int, reply: Reply) -> None:
        """Show a reply in the status message; failing that, as a message of its own (a queued
        job's progress and result are shown by its delivery whatever happens here)."""
        try:
            await self._edit(chat_id, status_id, reply.text, reply)
        except TelegramError as exc:
            log.info("status message %s not edited (%s)", status_id, exc)
            if reply.job_id is None:
                await self._show(chat_id, reply, reply_to=None)

    async def _download(self, selfie: FileRef) -> bytes | Reply:
        try:
            file = await self.application.bot.get_file(selfie.file_id)
            refusal = self.layer.check_upload(
                selfie.content_type, file.file_size or 0, DOWNLOAD_LIMIT
            )
            if refusal is not None:
                return refusal
            data = bytes(await file.download_as_bytearray())
        except TelegramError as exc:
            log.warning("could not download a selfie (%s)", exc)
            return replies.refused(replies.upload_unreadable())
        return self.layer.check_upload(selfie.content_type, len(data), DOWNLOAD_LIMIT) or data

    # ---- button presses -------------------------------------------------------------------

    async def _on_press(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None:
            return
        chat_id = query.message.chat.id if query.message else query.from_user.id
        asker = _asker(chat_id, Sender(query.from_user.id), query.from_user)
        async with self.layer.answering(asker):
            try:
                await self._press(query, self.receiver.key(update))
            except Exception:
                reference = secrets.token_hex(4)
                log.exception("button press %s failed (ref %s)", query.id, reference)
                text = replies.internal_error(reference)
                try:
                    await query.answer(cut(text, MAX_ALERT), show_alert=True)
                except TelegramError:  # answered already: say it in the chat
                    with contextlib.suppress(TelegramError):
                        await send(self.application.bot, chat_id, text)

    async def _press(self, query: CallbackQuery, key: str) -> None:
        pressed = query.message
        message = pressed if isinstance(pressed, Message) else None
        chat_id = pressed.chat.id if pressed is not None else query.from_user.id
        pick = pick_of_press(query.data)
        if pick is not None:
            await self._style_picked(query, message, *pick, key=key)
            return
        line = command_of_press(query.data)
        spec = self.layer.command_of_line(line) if line is not None else None
        if line is None or spec is None:  # not a button of ours: forged or from an old version
            await query.answer(replies.unknown_button(), show_alert=True)
            return
        presser, reply_to = await self._presser(query, message)
        target = Target(chat_id, presser.id, reply_to)
        actor = await self._actor(chat_id, presser, spec)
        reply = await self.layer.run_line(actor, line, deliver_to=target.to_json(), request_key=key)
        if reply.refused:
            await query.answer(cut(reply.text, MAX_ALERT), show_alert=True)
            return
        if reply.job_id is not None:
            await query.answer()
            await self._queued_by_press(reply, target)
            return
        # A page, a confirmation or a deletion takes the pressed message's place when that
        # message is about it: it carries the button, and the command layer accepted the press.
        if spec.replaces_message and message is not None and _carries(message, query.data):
            await self._replace(query, message, reply)
            return
        await query.answer()
        await self._answer(chat_id, presser, reply, reply_to=None)

    async def _presser(
        self, query: CallbackQuery, message: Message | None
    ) -> tuple[Sender, int | None]:
        """Who pressed, as the command layer knows people, and their message that the pressed
        one answers (a new job's answers reply to it too). On an answer to a group's anonymous
        admins, an admin acts as the group: their presses carry their own account."""
        presser = Sender(query.from_user.id)
        replied = message.reply_to_message if message is not None else None
        if message is None or replied is None:
            return presser, None
        if replied.sender_chat is not None and replied.sender_chat.id == message.chat_id:
            if await self._is_admin(message.chat_id, presser.id):
                return Sender(message.chat_id, anonymous_admin=True), replied.message_id
            return presser, None
        asker = replied.from_user
        mine = asker is not None and asker.id == presser.id
        return presser, replied.message_id if mine else None

    async def _queued_by_press(self, reply: Reply, target: Target) -> None:
        """A job queued by a button: its answer becomes the job's status message."""
        assert reply.job_id is not None
        try:
            status = await send(
                self.application.bot,
                target.chat_id,
                reply.text,
                markup=keyboard(reply.buttons),
                reply_to=target.reply_to,
            )
        except TelegramError:
            self._follow(reply.job_id, target)  # the result will still be sent
            raise
        target = dataclasses.replace(target, status_id=status.message_id)
        self._follow(reply.job_id, target)
        await self.layer.deliver_instead(reply.job_id, target.to_json())

    async def _style_picked(
        self, query: CallbackQuery, message: Message | None, token: str, style: str, *, key: str
    ) -> None:
        wait = await self.layer.waits.choice(token, key=key)
        if wait is None or message is None:
            # Expired, or a second tap: the keyboard is not live.
            await query.answer(replies.choice_expired(), show_alert=True)
            return
        note = Note.of(wait)
        request = note.request
        if not await self._acts_for(request, query.from_user.id):
            await query.answer(replies.not_yours(), show_alert=True)
            return
        if not await self.layer.waits.take(wait, key=key):  # picked meanwhile by another admin
            await query.answer()
            return
        await query.answer()
        line = f"{request.line} style={style}" if style else request.line
        await self._queue(dataclasses.replace(request, line=line), key, status_id=note.prompt_id)

    async def _replace(self, query: CallbackQuery, message: Message, reply: Reply) -> None:
        """Show a reply in place of the pressed message (the next page, a deleted result)."""
        bot = self.application.bot
        markup = keyboard(reply.buttons)
        if not reply.images and reply.chart is None and not is_media(message):
            await query.answer()
            try:
                await self._edit(message.chat_id, message.message_id, reply.text, reply)
            except BadRequest as exc:  # removed meanwhile (the deleted job's own message)
                log.info("could not edit message %s (%s)", message.message_id, exc)
                await self._show(message.chat_id, reply, reply_to=None)
            return
        # A photo cannot become text: the old message goes and the reply comes anew.
        try:
            await bot.delete_message(message.chat_id, message.message_id)
        except BadRequest as exc:  # too old to delete: at least its buttons go
            log.info("could not delete message %s (%s)", message.message_id, exc)
            with contextlib.suppress(BadRequest):
                await bot.edit_message_caption(
                    chat_id=message.chat_id,
                    message_id=message.message_id,
                    caption=reply.text[:1024],
                )
        if (
            not reply.images
            and reply.chart is None
            and markup is None
            and len(reply.text) <= MAX_ALERT
        ):
            await query.answer(reply.text)
            return
        await query.answer()
        await self._show(message.chat_id, reply, reply_to=None)

    # ---- answering ------------------------------------------------------------------------

    async def _answer(
        self, chat_id: int, sender: Sender, reply: Reply, *, reply_to: int | None
    ) -> None:
        """Show a reply. One meant for the asker alone goes to their private chat when asked
        in a group (a refusal stays in the group: it tells only what they asked for)."""
        bot = self.application.bot
        if not (reply.private and not reply.refused and chat_id < 0 and sender.is_person):
            await self._show(chat_id, reply, reply_to=reply_to)
            return
        try:
            await self._show(sender.id, reply, reply_to=None)
        except Forbidden:
            await send(bot, chat_id, replies.private_chat_needed(), reply_to=reply_to)
            return
        await send(bot, chat_id, replies.sent_privately(), reply_to=reply_to)

    async def _show(self, chat_id: int, reply: Reply, *, reply_to: int | None) -> None:
        files = await uploads(
            reply.images, self.layer.image, name=reply.job_id or "image", as_photo=self._as_photo
        )
        text = reply.text
        if reply.chart is not None:  # a photo with the text as its caption, cut to fit
            files.append(chart_upload(reply.chart))
            text = cut(text, MAX_CAPTION)
        sent = await send_all(
            self.application.bot,
            chat_id,
            text,
            files=files,
            markup=keyboard(reply.buttons),
            reply_to=reply_to,
        )
        # Images shown again (/show, a history page) go with their jobs too.
        for job_id, posts in posts_of(sent, files).items():
            await self.layer.posted(job_id, posts)

    async def _refuse(self, request: Request, text: str) -> None:
        await send(self.application.bot, request.chat_id, text, reply_to=request.reply_to)

    async def _edit(
        self, chat_id: int, message_id: int, text: str, reply: Reply | None = None
    ) -> None:
        """Edit a text message (its buttons replaced by the reply's, or removed)."""
        markup = keyboard(reply.buttons) if reply is not None else None
        try:
            await self.application.bot.edit_message_text(
                cut(text, MAX_TEXT), chat_id=chat_id, message_id=message_id, reply_markup=markup
            )
        except BadRequest as exc:
            if "not modified" not in exc.message:
                raise

    @contextlib.asynccontextmanager
    async def _answering(self, chat_id: int, reply_to: int) -> AsyncIterator[None]:
        """Whatever goes wrong, the person is told rather than left waiting."""
        try:
            yield
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("message in chat %s failed (ref %s)", chat_id, reference)
            with contextlib.suppress(Exception):
                text = replies.internal_error(reference)
                await send(self.application.bot, chat_id, text, reply_to=reply_to)

    # ---- who is who -----------------------------------------------------------------------

    async def _actor(self, chat_id: int, sender: Sender, spec: CommandSpec | None) -> Actor:
        """The sender as the command layer sees them. Whether they moderate the group is asked
        of Telegram only when the command cares, and every time (it can change any minute)."""
        moderator = sender.anonymous_admin
        cares = spec is not None and (spec.access == Access.MODERATOR or spec.name == "help")
        if not moderator and cares and chat_id < 0 and sender.is_person:
            moderator = await self._is_admin(chat_id, sender.id)
        return _actor(chat_id, sender.id, is_moderator=moderator)

    async def _is_admin(self, chat_id: int, user_id: int) -> bool:
        member = await self.application.bot.get_chat_member(chat_id, user_id)
        return member.status in _ADMIN_STATUSES

    async def _acts_for(self, request: Request, user_id: int) -> bool:
        """Whether a presser may act on a waiting request: its sender, or for one sent by the
        group's anonymous admins, any admin (their presses carry their own account)."""
        if request.sender_id == user_id:
            return True
        return request.sender_id == request.chat_id and await self._is_admin(
            request.chat_id, user_id
        )

    @property
    def _as_photo(self) -> bool:
        return self._settings.telegram_send_as == "photo"

    # ---- jobs -----------------------------------------------------------------------------

    def _follow(self, job_id: str, target: Target) -> None:
        if job_id in self._deliveries:
            return  # followed here already (its lease ran out while this process stalled)
        delivery = JobDelivery(
            self.application.bot,
            self.layer,
            job_id,
            target,
            send_as_photo=self._as_photo,
            budget=self._edit_budget,
            edit_interval=self._edit_interval,
        )
        task = asyncio.create_task(delivery.run(), name=f"telegram-delivery-{job_id}")
        self._deliveries[job_id] = task
        task.add_done_callback(lambda done: self._delivery_done(job_id, done))

    def _delivery_done(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._deliveries.get(job_id) is task:
            del self._deliveries[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def _wait_ended(self, wait: Wait, note: Note) -> None:
        """Tell the person the bot stopped waiting, in the message that asked."""
        spec = self.layer.command_of_line(note.request.line)
        name = spec.name if spec is not None else "headshot"
        with speaking(self.layer.noted_language(note.request.language)):
            text = replies.selfie_wait_over(name) if wait.for_photo else replies.choice_expired()
        with contextlib.suppress(TelegramError):
            await self._edit(note.request.chat_id, note.prompt_id, text)


def _asker(chat_id: int, sender: Sender, user: TelegramUser | None) -> Actor:
    """Whom a message or a press is answered for, with the language their app runs in (an
    anonymous admin's message is the group's: the group's language)."""
    locale = user.language_code if user is not None and sender.is_person else None
    return dataclasses.replace(_actor(chat_id, sender.id, is_moderator=False), locale=locale)


def _actor(chat_id: int, sender_id: int, *, is_moderator: bool) -> Actor:
    # Telegram's private chats have the person's (positive) id; groups have negative ids.
    return Actor(
        platform=PLATFORM,
        user_id=str(sender_id),
        community_id=str(chat_id) if chat_id < 0 else None,
        is_moderator=is_moderator,
    )


def _carries(message: Message, data: str | None) -> bool:
    """Whether the message shows a button with this callback data."""
    markup = message.reply_markup
    if markup is None or data is None:
        return False
    return any(button.callback_data == data for row in markup.inline_keyboard for button in row)


async def _log_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    log.error("Telegram update handling failed", exc_info=context.error)
