"""A fake Discord for end-to-end tests: REST API, gateway websocket and CDN on 127.0.0.1.

The real discord.py runs against it unchanged once two class attributes point at it:

    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)

Tests play the users: `run_command` and `press` send INTERACTION_CREATE over the gateway as the
Discord client would (checking options against the registered commands first, as the client
does), and everything the bot does in return is recorded as `Interaction`s and `Message`s.
Behaviour copied from Discord, quirks included:

- interaction callbacks answer `?with_response=1` with an InteractionCallbackResponse; a second
  callback is 400/40060; webhook routes answer 401/50027 once a token is older than
  `token_lifetime`;
- after a deferred "thinking" response the first follow-up fills in the loading message instead
  of making a new one, and keeps the defer's ephemerality;
- multipart edits keep or replace attachments by the `attachments` list;
- messages are checked against Discord's limits (2000 characters, 10 embeds, 5 rows of 5
  buttons, custom ids of at most 100 characters, ...) and answer 400/50035, 400/50006 (empty)
  or 413/40005 (file too large);
- `default_member_permissions` is not enforced: guild admins can override it, so a bot must
  check permissions itself. Guild-only commands cannot be run in DMs.
- a bot deletes its own messages at any age; in a channel it can no longer see (`hide_channel`)
  every request answers 403/50001 Missing Access;
- GET /gateway/bot reports `max_concurrency`, and every IDENTIFY is recorded (`identifies`)
  with its time and bucket (`shard_id % max_concurrency`). Discord takes one IDENTIFY per
  bucket every 5 seconds and answers a faster one with op 9 Invalid Session (not resumable);
  the fake does so once `identify_window` is set (None, the default, lets tests restart a bot
  at once).

It sends no rate-limit headers, no MESSAGE_CREATE events and no GUILD_CREATEs: the bot is in no
guild as far as the gateway is concerned, so discord.py fires `on_ready` only after its
`guild_ready_timeout` (2 s unless the client is made with a smaller one).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import mimetypes
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from aiohttp import BodyPartReader, WSCloseCode, WSMsgType, web

JSON = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DISCORD_EPOCH_MS = 1_420_070_400_000
DEFAULT_APPLICATION_ID = 1_187_654_321_098_765_432
DEFAULT_OWNER_ID = 1_100_000_000_000_000_001

# Message flags.
SUPPRESS_EMBEDS = 1 << 2
EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_NOTIFICATIONS = 1 << 12
COMPONENTS_V2 = 1 << 15
_SENDABLE_FLAGS = SUPPRESS_EMBEDS | EPHEMERAL | SUPPRESS_NOTIFICATIONS | COMPONENTS_V2
_EDITABLE_FLAGS = SUPPRESS_EMBEDS | COMPONENTS_V2

# Interaction types and callback types.
APPLICATION_COMMAND = 2
MESSAGE_COMPONENT = 3
MODAL_SUBMIT = 5
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
DEFERRED_UPDATE_MESSAGE = 6
UPDATE_MESSAGE = 7
MODAL = 9
_ALLOWED_CALLBACKS = {
    APPLICATION_COMMAND: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL},
    MESSAGE_COMPONENT: {
        CHANNEL_MESSAGE,
        DEFERRED_CHANNEL_MESSAGE,
        DEFERRED_UPDATE_MESSAGE,
        UPDATE_MESSAGE,
        MODAL,
    },
    MODAL_SUBMIT: {
        CHANNEL_MESSAGE,
        DEFERRED_CHANNEL_MESSAGE,
        DEFERRED_UPDATE_MESSAGE,
        UPDATE_MESSAGE,
    },
}

# Application command option types.
SUB_COMMAND = 1
SUB_COMMAND_GROUP = 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = range(3, 12)
_NESTING = (SUB_COMMAND, SUB_COMMAND_GROUP)

# View channel, send messages, embed links, attach files, read history, external emojis,
# use application commands, send in threads: what a typical bot role grants.
_BOT_PERMISSIONS = sum(1 << bit for bit in (10, 11, 14, 15, 16, 18, 31, 38))
_MAX_SAFE_INTEGER = 2**53
_COMMAND_NAME = re.compile(r"[-_\w]{1,32}")
_API = "/api/v10"
_CDN = "/cdn"
_MiB = 1024 * 1024


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _json(body: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": discord.py compares the header with == and treats
    # anything else (aiohttp's "; charset=utf-8" included) as plain text.
    return web.Response(
        body=_dumps(body).encode(), status=status, headers={"Content-Type": "application/json"}
    )


class _Reject(Exception):
    """An error answer, raised anywhere in a handler and rendered by the middleware."""

    def __init__(self, status: int, code: int, message: str, errors: JSON | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: JSON = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return _json(body, status=self.status)


def _invalid_form(problems: list[tuple[str, str]]) -> _Reject:
    """400/50035 with Discord's nested `errors` object (discord.py flattens it back)."""
    errors: JSON = {}
    for path, text in problems:
        node = errors
        for part in path.split("."):
            node = node.setdefault(part, {})
        node.setdefault("_errors", []).append({"code": "BASE_TYPE_INVALID", "message": text})
    return _Reject(400, 50035, "Invalid Form Body", errors)


class _Snowflakes:
    """Increasing ids that decode to the current time, like Discord's."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        now = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(self._last + 1, now)
        return self._last


# -- recorded state ------------------------------------------------------------------------


@dataclass(eq=False)
class StoredFile:
    """A file on the fake CDN: one the bot sent, or (as an `Upload`) one a user attached."""

    id: int
    filename: str
    data: bytes = field(repr=False)
    content_type: str | None
    url: str
    size: int

    def attachment(self) -> JSON:
        """The attachment object Discord puts in messages and in resolved command data."""
        payload: JSON = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
        }
        if self.content_type is not None:
            payload["content_type"] = self.content_type
        return payload


@dataclass(eq=False)
class Upload(StoredFile):
    """A file a user attached: give it as the value of an attachment option."""


@dataclass(eq=False)
class Message:
    """A message as the fake keeps it; `payload()` renders it as Discord's JSON."""

    id: int
    channel_id: int
    guild_id: int | None
    author: JSON
    created_at: datetime
    type: int = 0
    content: str = ""
    embeds: list[JSON] = field(default_factory=list)
    components: list[JSON] = field(default_factory=list)
    files: list[StoredFile] = field(default_factory=list)
    flags: int = 0
    tts: bool = False
    application_id: int | None = None  # set on interaction messages (also their webhook_id)
    interaction_id: int | None = None
    interaction_metadata: JSON | None = None
    message_reference: JSON | None = None
    allowed_mentions: JSON | None = None
    loading: bool = False
    deleted: bool = False
    edited_at: datetime | None = None
    edits: list[JSON] = field(default_factory=list)

    @property
    def author_id(self) -> int:
        return int(self.author["id"])

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    def snapshot(self) -> JSON:
        return {
            "content": self.content,
            "embeds": list(self.embeds),
            "components": list(self.components),
            "filenames": [file.filename for file in self.files],
        }

    def buttons(self) -> list[JSON]:
        """Every button on the message, action rows (and v2 containers) flattened."""
        found: list[JSON] = []
        pending = list(reversed(self.components))
        while pending:
            component = pending.pop()
            if component.get("type") == 2:
                found.append(component)
            children = [*component.get("components", []), component.get("accessory")]
            pending.extend(child for child in reversed(children) if isinstance(child, dict))
        return found

    def payload(self) -> JSON:
        """The full message object, as the REST API and interaction payloads carry it."""
        body: JSON = {
            "id": str(self.id),
            "type": self.type,
            "channel_id": str(self.channel_id),
            "author": self.author,
            "content": self.content,
            "timestamp": _iso(self.created_at),
            "edited_timestamp": None if self.edited_at is None else _iso(self.edited_at),
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [file.attachment() for file in self.files],
            "embeds": self._rendered_embeds(),
            "pinned": False,
            "flags": self.flags | (LOADING if self.loading else 0),
            "components": self.components,
        }
        if self.guild_id is not None:
            body["guild_id"] = str(self.guild_id)
        if self.application_id is not None:
            body["webhook_id"] = body["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            body["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            body["message_reference"] = self.message_reference
        return body

    def _rendered_embeds(self) -> list[JSON]:
        """Embeds with `attachment://name` links resolved to the CDN, as Discord returns them."""
        urls = {file.filename: file.url for file in self.files}
        if not urls:
            return self.embeds
        rendered = []
        for embed in self.embeds:
            embed = dict(embed)
            for key in ("image", "thumbnail"):
                part = embed.get(key)
                reference = part.get("url") if isinstance(part, dict) else None
                if isinstance(reference, str) and reference.startswith("attachment://"):
                    url = urls.get(reference.removeprefix("attachment://"))
                    if url is not None:
                        embed[key] = {**part, "url": url, "proxy_url": url}  # type: ignore[dict-item]
            rendered.append(embed)
        return rendered


@dataclass(eq=False)
class Interaction:
    """An interaction the fake sent, and what the bot did about it."""

    id: int
    token: str
    type: int
    user_id: int
    guild_id: int | None
    channel_id: int
    shard_id: int
    payload: JSON
    fake: FakeDiscord = field(repr=False)
    sent_at: float = 0.0
    acked_at: float | None = None  # time.monotonic() of the first successful callback
    callback_type: int | None = None
    ephemeral: bool = False
    original: Message | None = None  # the response; for callbacks 6 and 7 the pressed message
    followups: list[Message] = field(default_factory=list)
    modal: JSON | None = None  # the modal's data when the callback was 9

    async def wait_acked(self, timeout: float = 10) -> None:  # noqa: ASYNC109
        await self.fake.wait_for(lambda: self.acked_at is not None, timeout)


@dataclass(frozen=True)
class Identify:
    """One IDENTIFY received: when (time.monotonic()), for which shard, and whether it came
    too soon after another of its bucket (answered with op 9 Invalid Session)."""

    at: float
    shard_id: int
    bucket: int
    refused: bool


@dataclass(eq=False)
class GatewaySession:
    """One gateway session (IDENTIFY, READY), kept across RESUMEs on new connections."""

    session_id: str
    shard_id: int
    shard_count: int
    identify: JSON
    sequence: int = 0
    resumes: int = 0
    ws: web.WebSocketResponse | None = field(default=None, repr=False)
    frames: list[str] = field(default_factory=list, repr=False)  # frames[n] has s = n + 1

    @property
    def closed(self) -> bool:
        return self.ws is None or self.ws.closed

    async def dispatch(self, event: str, data: JSON) -> None:
        """Send an event; while disconnected it waits in `frames` for the client's RESUME."""
        self.sequence += 1
        frame = _dumps({"op": 0, "t": event, "s": self.sequence, "d": data})
        self.frames.append(frame)
        await self._send(frame)

    async def attach(self, ws: web.WebSocketResponse, last_sequence: int) -> None:
        """Take over a new connection and replay what the client missed."""
        self.ws = ws
        for frame in self.frames[last_sequence:]:
            await self._send(frame)

    async def _send(self, frame: str) -> None:
        ws = self.ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError):
                await ws.send_str(frame)


@dataclass(frozen=True)
class _Caller:
    user_id: int
    guild_id: int | None
    permissions: int


@dataclass
class _Incoming:
    filename: str
    data: bytes
    content_type: str | None


@dataclass
class _Draft:
    """What a message will look like after a create or edit that passed validation."""

    content: str
    embeds: list[JSON]
    components: list[JSON]
    kept: list[StoredFile]
    new: list[_Incoming]


# -- the fake --------------------------------------------------------------------------------


class FakeDiscord:
    """Discord's REST API, gateway and CDN for one bot application, served on 127.0.0.1."""

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",  # noqa: S107
        application_id: int = DEFAULT_APPLICATION_ID,
        bot_user_id: int = DEFAULT_APPLICATION_ID,
        owner_id: int = DEFAULT_OWNER_ID,
        recommended_shards: int = 1,
        max_concurrency: int = 1,
        identify_window: float | None = None,
        attachment_size_limit: int = 25 * _MiB,
        token_lifetime: float = 900.0,
        heartbeat_interval_ms: int = 41250,
    ) -> None:
        self.token = token
        self.application_id = application_id
        self.bot_user_id = bot_user_id
        self.owner_id = owner_id
        self.recommended_shards = recommended_shards
        self.max_concurrency = max_concurrency
        self.identify_window = identify_window
        self.attachment_size_limit = attachment_size_limit
        self.token_lifetime = token_lifetime
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.api_base = self.gateway_url = self.cdn_base = ""

        self.sessions: list[GatewaySession] = []
        self.identifies: list[Identify] = []
        self.commands: list[JSON] = []
        # Each user's client language and each server's (Discord sends both with every
        # interaction); unset: American English, Discord's default.
        self.locales: dict[int, str] = {}
        self.guild_locales: dict[int, str] = {}
        self.guild_commands: dict[int, list[JSON]] = {}
        self.interactions: dict[int, Interaction] = {}
        self.messages: dict[int, Message] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []

        self._ids = _Snowflakes()
        self._runner: web.AppRunner | None = None
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._check_scheduled = False
        self._sockets: set[web.WebSocketResponse] = set()
        self._shards: dict[int, GatewaySession] = {}  # the latest session of each shard
        self._sessions_by_id: dict[str, GatewaySession] = {}
        self._by_token: dict[str, Interaction] = {}
        self._files: dict[int, StoredFile] = {}
        self._channels: dict[int, JSON] = {}
        self._channel_messages: dict[int, list[Message]] = {}
        self._default_channels: dict[int, int] = {}  # guild id -> channel id
        self._dm_by_user: dict[int, int] = {}
        self._dm_opened: set[int] = set()  # users the bot opened a DM with
        self._hidden: set[int] = set()  # channels the bot lost access to
        self._joined_at = _iso(datetime(2024, 1, 1, tzinfo=UTC))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(
            client_max_size=11 * max(self.attachment_size_limit, _MiB) + _MiB,
            middlewares=[self._middleware],
        )
        self._add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        self.api_base = f"http://127.0.0.1:{port}{_API}"
        self.cdn_base = f"http://127.0.0.1:{port}{_CDN}"
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway"

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- waiting -----------------------------------------------------------------------------

    def _changed(self) -> None:
        """Re-check the waiting predicates soon: once per loop turn, however many changes."""
        if self._waiters and not self._check_scheduled:
            self._check_scheduled = True
            asyncio.get_running_loop().call_soon(self._check_waiters)

    def _check_waiters(self) -> None:
        self._check_scheduled = False
        waiting = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                if predicate():
                    future.set_result(None)
                    continue
            except Exception as exc:
                future.set_exception(exc)
                continue
            waiting.append((predicate, future))
        self._waiters = waiting

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10,  # noqa: ASYNC109 (the tests' API)
    ) -> None:
        """Return once `predicate()` holds, re-checking after every change of state."""
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            if not future.cancelled():  # the predicate itself raised TimeoutError
                raise
            message = f"still false after {timeout}s: {_describe(predicate)}\n{self._summary()}"
            raise TimeoutError(message) from None
        finally:
            future.cancel()

    async def wait_ready(self, shards: int = 1, timeout: float = 10) -> None:  # noqa: ASYNC109
        """Until `shards` shards have a connected session that got READY (or RESUMED)."""
        await self.wait_for(
            lambda: sum(not s.closed for s in self._shards.values()) >= shards, timeout
        )

    def _summary(self) -> str:
        unacked = sum(i.acked_at is None for i in self.interactions.values())
        shards = [(s.shard_id, "closed" if s.closed else "open") for s in self._shards.values()]
        return (
            f"{len(self.interactions)} interactions ({unacked} not acknowledged), "
            f"{len(self.messages)} messages, shards {shards}, "
            f"last requests {self.requests[-5:]}, unhandled {self.unhandled}"
        )

    # -- what tests read -----------------------------------------------------------------------

    def channel_messages(self, channel_id: int) -> list[Message]:
        """The channel's messages that are not deleted, oldest first (ephemeral ones included)."""
        return [m for m in self._channel_messages.get(channel_id, []) if not m.deleted]

    def dm_channel_of(self, user_id: int) -> int | None:
        """The DM channel the bot opened with this user (POST /users/@me/channels), if any."""
        return self._dm_by_user[user_id] if user_id in self._dm_opened else None

    def add_channel(self, guild_id: int, channel_id: int | None = None) -> int:
        """Make a guild text channel exist (for bots that post to configured channels)."""
        return self._guild_channel(guild_id, channel_id)

    def delete_channel(self, channel_id: int) -> None:
        """A moderator deleted the channel: posting to it is now 404 Unknown Channel."""
        self._channels.pop(channel_id, None)

    def hide_channel(self, channel_id: int) -> None:
        """A moderator took the bot's access to the channel: its REST routes now answer 403."""
        self._hidden.add(channel_id)

    # -- what users do -------------------------------------------------------------------------

    def upload(
        self,
        data: bytes,
        filename: str,
        content_type: str | None = None,
        *,
        size: int | None = None,
    ) -> Upload:
        """A file a user attached; its `size` claims `len(data)` unless given."""
        if not self.cdn_base:
            raise RuntimeError("start the fake before uploading")
        file_id = self._ids.next()
        upload = Upload(
            id=file_id,
            filename=filename,
            data=bytes(data),
            content_type=content_type,
            url=self._cdn_url(file_id, filename),
            size=len(data) if size is None else size,
        )
        self._files[file_id] = upload
        return upload

    async def run_command(
        self,
        path: str,
        options: Mapping[str, Any] | None = None,
        *,
        user_id: int,
        guild_id: int | None = None,
        channel_id: int | None = None,
        permissions: int = 0,
        attachment_size_limit: int | None = None,
    ) -> Interaction:
        """Send a slash command the way the Discord client would, e.g. "admin quota set".

        Raises AssertionError where the client would refuse: unknown command or option, a
        value of the wrong type or out of its range or choices, a missing required option, a
        group without its subcommand, a guild-only command in a DM.
        """
        command, leaf, chain = self._find_command(path.split(), guild_id)
        if guild_id is None and not _allowed_in_dms(command):
            raise AssertionError(f"/{path} is guild-only: Discord does not offer it in DMs")
        resolved: JSON = {}
        caller = _Caller(user_id, guild_id, permissions)
        values = self._option_values(path, leaf, options or {}, caller, resolved)
        for parent in reversed(chain):
            values = [{"type": parent["type"], "name": parent["name"], "options": values}]
        data: JSON = {"id": command["id"], "name": command["name"], "type": 1, "options": values}
        if resolved:
            data["resolved"] = resolved
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return await self._send_interaction(
            APPLICATION_COMMAND,
            data,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            permissions=permissions,
            attachment_size_limit=attachment_size_limit,
        )

    async def press(
        self,
        message: Message,
        label: str,
        *,
        user_id: int,
        guild_id: int | None = None,
        channel_id: int | None = None,
        permissions: int = 0,
    ) -> Interaction:
        """Press the (only) enabled button with this label on the message."""
        buttons = message.buttons()
        matches = [button for button in buttons if button.get("label") == label]
        if len(matches) != 1:
            labels = [button.get("label") for button in buttons]
            raise AssertionError(f"{len(matches)} buttons labelled {label!r}; buttons: {labels}")
        button = matches[0]
        if button.get("disabled"):
            raise AssertionError(f"the {label!r} button is disabled")
        if "custom_id" not in button:
            raise AssertionError(f"the {label!r} button is a link: pressing it sends nothing")
        return await self.press_custom_id(
            button["custom_id"],
            message,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            permissions=permissions,
        )

    async def press_custom_id(
        self,
        custom_id: str,
        message: Message,
        *,
        user_id: int,
        guild_id: int | None = None,
        channel_id: int | None = None,
        permissions: int = 0,
    ) -> Interaction:
        """Send a button press with any custom id (a forged one, say) from the message.

        The guild and channel default to the message's; naming others is an AssertionError.
        """
        if message.deleted:
            raise AssertionError(f"message {message.id} is deleted")
        owner = self.interactions.get(message.interaction_id or 0)
        if message.ephemeral and owner is not None and owner.user_id != user_id:
            raise AssertionError(f"only user {owner.user_id} sees ephemeral message {message.id}")
        if guild_id not in (None, message.guild_id) or channel_id not in (None, message.channel_id):
            raise AssertionError(f"message {message.id} is in channel {message.channel_id}")
        return await self._send_interaction(
            MESSAGE_COMPONENT,
            {"custom_id": custom_id, "component_type": 2},
            user_id=user_id,
            guild_id=message.guild_id,
            channel_id=message.channel_id,
            permissions=permissions,
            message=message,
        )

    async def drop_connections(self) -> None:
        """Close every gateway websocket, as a network blip would; clients RESUME."""
        for ws in list(self._sockets):
            await ws.close(code=4000, message=b"network blip")
        self._changed()

    # -- building interactions ---------------------------------------------------------------

    def _find_command(
        self, words: list[str], guild_id: int | None
    ) -> tuple[JSON, JSON, list[JSON]]:
        """The top-level command, the (sub)command the path names, and the groups between."""
        pool = [*self.guild_commands.get(guild_id or 0, []), *self.commands]
        top = next(
            (c for c in pool if words and c["name"] == words[0] and c.get("type", 1) == 1), None
        )
        if top is None:
            names = sorted(c["name"] for c in pool)
            raise AssertionError(f"/{' '.join(words)} is not registered; registered: {names}")
        node, chain = top, []
        for word in words[1:]:
            children = node.get("options") or []
            child = next((o for o in children if o["name"] == word and o["type"] in _NESTING), None)
            if child is None:
                raise AssertionError(f"/{' '.join(words)}: no subcommand {word!r}")
            node = child
            chain.append(node)
        if any(o["type"] in _NESTING for o in node.get("options") or []):
            names = [o["name"] for o in node["options"]]
            raise AssertionError(f"/{' '.join(words)} is a group; name one of {names}")
        return top, node, chain

    def _option_values(
        self, path: str, leaf: JSON, given: Mapping[str, Any], caller: _Caller, resolved: JSON
    ) -> list[JSON]:
        registered = {option["name"]: option for option in leaf.get("options") or []}
        unknown = sorted(set(given) - set(registered))
        if unknown:
            raise AssertionError(f"/{path} has no option(s) {unknown}; it has {list(registered)}")
        values = []
        for name, spec in registered.items():
            value = given.get(name)
            if value is None:
                if spec.get("required"):
                    raise AssertionError(f"/{path}: option {name!r} is required")
                continue
            try:
                wire = self._option_value(spec, value, caller, resolved)
            except AssertionError as exc:
                raise AssertionError(f"/{path}: option {name!r}: {exc}") from None
            values.append({"type": spec["type"], "name": name, "value": wire})
        return values

    def _option_value(self, spec: JSON, value: Any, caller: _Caller, resolved: JSON) -> Any:
        """Check one value as the Discord client does and give its wire form."""
        kind = spec["type"]
        if kind == STRING:
            _expect(isinstance(value, str), f"{value!r} is not a string")
            low, high = max(spec.get("min_length", 1), 1), spec.get("max_length", 6000)
            _expect(low <= len(value) <= high, f"length {len(value)} is not in [{low}, {high}]")
        elif kind in (INTEGER, NUMBER):
            numeric = (int,) if kind == INTEGER else (int, float)
            _expect(isinstance(value, numeric) and not isinstance(value, bool), f"{value!r}")
            low = spec.get("min_value", -_MAX_SAFE_INTEGER)
            high = spec.get("max_value", _MAX_SAFE_INTEGER)
            _expect(low <= value <= high, f"{value} is not in [{low}, {high}]")
        elif kind == BOOLEAN:
            _expect(isinstance(value, bool), f"{value!r} is not a boolean")
        elif kind == ATTACHMENT:
            _expect(isinstance(value, Upload), f"{value!r} is not an Upload (fake.upload(...))")
            attachment = {**value.attachment(), "ephemeral": True}
            resolved.setdefault("attachments", {})[str(value.id)] = attachment
            return str(value.id)
        elif kind in (USER, MENTIONABLE, ROLE):
            _expect(isinstance(value, int) and not isinstance(value, bool), f"{value!r} id")
            if kind == ROLE or (kind == MENTIONABLE and value == caller.guild_id):
                _expect(caller.guild_id is not None, "roles exist only in guilds")
                resolved.setdefault("roles", {})[str(value)] = _role(value, caller.guild_id)
            else:
                self._resolve_user(value, caller, resolved)
            return str(value)
        else:
            raise AssertionError(f"option type {kind} is not supported by the fake")
        choices = spec.get("choices")
        if choices:
            allowed = [choice["value"] for choice in choices]
            _expect(value in allowed, f"{value!r} is not one of the choices {allowed}")
        return value

    def _resolve_user(self, user_id: int, caller: _Caller, resolved: JSON) -> None:
        resolved.setdefault("users", {})[str(user_id)] = self._user(user_id)
        if caller.guild_id is not None:
            permissions = caller.permissions if user_id == caller.user_id else 0
            member = self._member(user_id, permissions, with_user=False)
            resolved.setdefault("members", {})[str(user_id)] = member

    async def _send_interaction(
        self,
        kind: int,
        data: JSON,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        permissions: int,
        attachment_size_limit: int | None = None,
        message: Message | None = None,
    ) -> Interaction:
        session = self._session_for(guild_id)
        if guild_id is None:
            channel_id = self._dm_channel(user_id, channel_id)
        else:
            channel_id = self._guild_channel(guild_id, channel_id)
        interaction_id, token = self._ids.next(), secrets.token_urlsafe(48)
        payload: JSON = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "token": token,
            "version": 1,
            "channel_id": str(channel_id),
            "channel": self._channels[channel_id],
            "app_permissions": str(_BOT_PERMISSIONS),
            "locale": self.locales.get(user_id, "en-US"),
            "entitlements": [],
            "attachment_size_limit": attachment_size_limit or self.attachment_size_limit,
        }
        if guild_id is None:
            payload["user"] = self._user(user_id)
            payload["context"] = 1
            payload["authorizing_integration_owners"] = {"0": "0"}
        else:
            payload["channel"] = {**payload["channel"], "permissions": str(permissions)}
            payload["guild_id"] = str(guild_id)
            guild_locale = self.guild_locales.get(guild_id, "en-US")
            payload["guild"] = {"id": str(guild_id), "locale": guild_locale, "features": []}
            payload["guild_locale"] = guild_locale
            payload["member"] = self._member(user_id, permissions)
            payload["context"] = 0
            payload["authorizing_integration_owners"] = {"0": str(guild_id)}
        if message is not None:
            payload["message"] = message.payload()
        interaction = Interaction(
            id=interaction_id,
            token=token,
            type=kind,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            shard_id=session.shard_id,
            payload=payload,
            fake=self,
        )
        self.interactions[interaction_id] = interaction
        self._by_token[token] = interaction
        interaction.sent_at = time.monotonic()
        await session.dispatch("INTERACTION_CREATE", payload)
        self._changed()
        return interaction

    def _session_for(self, guild_id: int | None) -> GatewaySession:
        if not self._shards:
            raise AssertionError("no gateway session: connect the client, then fake.wait_ready()")
        count = next(iter(self._shards.values())).shard_count
        shard_id = 0 if guild_id is None else (guild_id >> 22) % count
        session = self._shards.get(shard_id)
        if session is None:
            raise AssertionError(f"shard {shard_id} of {count} has not identified")
        return session

    # -- users, channels ---------------------------------------------------------------------

    def _bot_user(self) -> JSON:
        return {
            "id": str(self.bot_user_id),
            "username": "headshot-bot",
            "global_name": None,
            "discriminator": "0",
            "avatar": None,
            "bot": True,
            "verified": True,
            "mfa_enabled": False,
            "flags": 0,
            "public_flags": 0,
        }

    def _user(self, user_id: int) -> JSON:
        if user_id == self.bot_user_id:
            return self._bot_user()
        return {
            "id": str(user_id),
            "username": f"user{user_id}",
            "global_name": f"User {user_id}",
            "discriminator": "0",
            "avatar": None,
            "public_flags": 0,
        }

    def _member(self, user_id: int, permissions: int, *, with_user: bool = True) -> JSON:
        member: JSON = {
            "roles": [],
            "joined_at": self._joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "nick": None,
            "avatar": None,
            "banner": None,
            "flags": 0,
            "communication_disabled_until": None,
            "permissions": str(permissions),
        }
        if with_user:
            member["user"] = self._user(user_id)
        return member

    def _dm_channel(self, user_id: int, channel_id: int | None = None) -> int:
        known = self._dm_by_user.get(user_id)
        if channel_id is not None and known is not None and channel_id != known:
            raise AssertionError(f"user {user_id}'s DM channel is {known}, not {channel_id}")
        if known is not None:
            return known
        channel_id = channel_id or self._ids.next()
        if channel_id in self._channels:
            raise AssertionError(f"channel {channel_id} is not user {user_id}'s DM channel")
        self._dm_by_user[user_id] = channel_id
        self._channels[channel_id] = {
            "id": str(channel_id),
            "type": 1,
            "last_message_id": None,
            "flags": 0,
            "recipients": [self._user(user_id)],
        }
        return channel_id

    def _guild_channel(self, guild_id: int, channel_id: int | None) -> int:
        if channel_id is None:
            channel_id = self._default_channels.setdefault(guild_id, self._ids.next())
        channel = self._channels.get(channel_id)
        if channel is None:
            self._channels[channel_id] = {
                "id": str(channel_id),
                "type": 0,
                "guild_id": str(guild_id),
                "name": f"channel-{len(self._channels)}",
                "position": 0,
                "permission_overwrites": [],
                "parent_id": None,
                "nsfw": False,
                "topic": None,
                "last_message_id": None,
                "rate_limit_per_user": 0,
                "flags": 0,
            }
        elif channel.get("guild_id") != str(guild_id):
            raise AssertionError(f"channel {channel_id} is not in guild {guild_id}")
        return channel_id

    def _cdn_url(self, file_id: int, filename: str) -> str:
        return f"{self.cdn_base}/attachments/{file_id}/{quote(filename)}"

    # -- messages --------------------------------------------------------------------------------

    def _draft(
        self,
        body: JSON,
        uploaded: dict[int, _Incoming],
        base: Message | None,
        *,
        size_limit: int,
    ) -> _Draft:
        """The message that `body` (a create, or an edit of `base`) describes, validated."""
        content = body.get("content", base.content if base else "") or ""
        embeds = body.get("embeds", base.embeds if base else []) or []
        components = body.get("components", base.components if base else []) or []
        if not isinstance(content, str):
            raise _invalid_form([("content", "Must be a string.")])
        kept, new = self._resolve_attachments(body, uploaded, base.files if base else [])
        flags = int(body.get("flags") or (base.flags if base else 0))
        problems = _content_problems(content, embeds, len(kept) + len(new))
        problems += _component_problems(components, flags)
        if problems:
            raise _invalid_form(problems)
        if any(len(file.data) > size_limit for file in new):
            raise _Reject(413, 40005, "Request entity too large")
        extras = body.get("sticker_ids") or body.get("poll")
        if not (content or embeds or components or kept or new or extras):
            raise _Reject(400, 50006, "Cannot send an empty message")
        return _Draft(content, embeds, components, kept, new)

    @staticmethod
    def _resolve_attachments(
        body: JSON, uploaded: dict[int, _Incoming], current: list[StoredFile]
    ) -> tuple[list[StoredFile], list[_Incoming]]:
        """Discord's rule: no `attachments` key keeps the current files and adds the uploads;
        with one, only the listed existing ids stay, and listed indexes name the uploads."""
        listed = body.get("attachments")
        if listed is None:
            return list(current), [uploaded[index] for index in sorted(uploaded)]
        by_id = {file.id: file for file in current}
        kept: list[StoredFile] = []
        new: list[_Incoming] = []
        used: set[int] = set()
        for position, entry in enumerate(listed):
            ident = int(entry.get("id", -1))
            if ident in by_id:
                kept.append(by_id[ident])
            elif ident in uploaded:
                incoming = uploaded[ident]
                filename = entry.get("filename") or incoming.filename
                new.append(_Incoming(filename, incoming.data, incoming.content_type))
                used.add(ident)
            else:
                raise _invalid_form([(f"attachments.{position}.id", f"Unknown attachment {ident}")])
        new += [uploaded[index] for index in sorted(uploaded) if index not in used]
        return kept, new

    def _store(self, incoming: _Incoming) -> StoredFile:
        file_id = self._ids.next()
        guessed = mimetypes.guess_type(incoming.filename)[0]
        sent = incoming.content_type
        if sent == "application/octet-stream":  # what discord.py labels every file
            sent = None
        stored = StoredFile(
            id=file_id,
            filename=incoming.filename,
            data=incoming.data,
            content_type=guessed or sent,
            url=self._cdn_url(file_id, incoming.filename),
            size=len(incoming.data),
        )
        self._files[file_id] = stored
        return stored

    def _create_message(
        self,
        channel_id: int,
        draft: _Draft,
        body: JSON,
        *,
        flags: int,
        interaction: Interaction | None = None,
        loading: bool = False,
    ) -> Message:
        channel = self._channels[channel_id]
        guild_id = int(channel["guild_id"]) if "guild_id" in channel else None
        reference = body.get("message_reference")
        if reference:  # checked before any file is stored
            reference = self._reference(reference, channel_id, guild_id)
        message = Message(
            id=self._ids.next(),
            channel_id=channel_id,
            guild_id=guild_id,
            author=self._bot_user(),
            created_at=datetime.now(UTC),
            content=draft.content,
            embeds=draft.embeds,
            components=draft.components,
            files=[*draft.kept, *map(self._store, draft.new)],
            flags=flags,
            tts=bool(body.get("tts")),
            allowed_mentions=body.get("allowed_mentions"),
            loading=loading,
        )
        if interaction is not None:
            message.application_id = self.application_id
            message.interaction_id = interaction.id
            message.interaction_metadata = self._interaction_metadata(interaction)
            message.type = 20 if interaction.type == APPLICATION_COMMAND else 0
        if reference:
            message.message_reference = reference
            message.type = 19
        message.edits.append(message.snapshot())
        self.messages[message.id] = message
        self._channel_messages.setdefault(channel_id, []).append(message)
        return message

    def _reference(self, reference: JSON, channel_id: int, guild_id: int | None) -> JSON:
        target = self.messages.get(_int(str(reference.get("message_id"))))
        if (target is None or target.deleted) and reference.get("fail_if_not_exists", True):
            raise _invalid_form([("message_reference", "Unknown message")])
        echoed: JSON = {
            "type": 0,
            "message_id": str(reference.get("message_id")),
            "channel_id": str(reference.get("channel_id") or channel_id),
        }
        if guild_id is not None:
            echoed["guild_id"] = str(guild_id)
        return echoed

    def _apply_edit(self, message: Message, draft: _Draft, body: JSON, *, edited: bool) -> None:
        message.content = draft.content
        message.embeds = draft.embeds
        message.components = draft.components
        message.files = [*draft.kept, *map(self._store, draft.new)]
        if "flags" in body:
            wanted = int(body["flags"] or 0) & _EDITABLE_FLAGS
            message.flags = (message.flags & ~_EDITABLE_FLAGS) | wanted
        if "allowed_mentions" in body:
            message.allowed_mentions = body["allowed_mentions"]
        message.loading = False
        if edited:
            message.edited_at = datetime.now(UTC)
        message.edits.append(message.snapshot())

    def _interaction_metadata(self, interaction: Interaction) -> JSON:
        metadata: JSON = {
            "id": str(interaction.id),
            "type": interaction.type,
            "user": self._user(interaction.user_id),
            "authorizing_integration_owners": interaction.payload["authorizing_integration_owners"],
        }
        if interaction.type == APPLICATION_COMMAND:
            metadata["name"] = interaction.payload["data"]["name"]
            metadata["command_type"] = 1
        if "message" in interaction.payload:
            metadata["interacted_message_id"] = interaction.payload["message"]["id"]
        if interaction.original is not None:
            metadata["original_response_message_id"] = str(interaction.original.id)
        return metadata

    # -- HTTP plumbing -------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        webhook_message = "/webhooks/{app_id}/{token}/messages/{message_id}"
        channel_message = "/channels/{channel_id}/messages/{message_id}"
        routes: list[tuple[str, str, Handler, bool]] = [
            ("GET", "/users/@me", self._get_me, True),
            ("GET", "/oauth2/applications/@me", self._get_application, True),
            ("GET", "/gateway", self._get_gateway, False),
            ("GET", "/gateway/bot", self._get_gateway_bot, True),
            ("GET", "/applications/{app_id}/commands", self._get_commands, True),
            ("PUT", "/applications/{app_id}/commands", self._put_commands, True),
            ("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self._get_commands, True),
            ("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self._put_commands, True),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._callback, False),
            ("POST", "/webhooks/{app_id}/{token}", self._post_followup, False),
            ("GET", webhook_message, self._get_webhook_message, False),
            ("PATCH", webhook_message, self._patch_webhook_message, False),
            ("DELETE", webhook_message, self._delete_webhook_message, False),
            ("GET", "/channels/{channel_id}", self._get_channel, True),
            ("POST", "/channels/{channel_id}/messages", self._post_channel_message, True),
            ("POST", "/channels/{channel_id}/typing", self._typing, True),
            ("GET", channel_message, self._get_channel_message, True),
            ("PATCH", channel_message, self._patch_channel_message, True),
            ("DELETE", channel_message, self._delete_channel_message, True),
            ("POST", "/users/@me/channels", self._open_dm, True),
        ]
        for method, path, handler, bot_only in routes:
            app.router.add_route(
                method, _API + path, self._bot_only(handler) if bot_only else handler
            )
        app.router.add_get(_CDN + "/attachments/{file_id}/{filename}", self._get_cdn_file)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._unhandled)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(_API + "/"):
            self.requests.append((request.method, request.path.removeprefix(_API)))
        try:
            return await handler(request)
        except _Reject as reject:
            return reject.response()
        finally:
            self._changed()

    def _bot_only(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if request.headers.get("Authorization") != f"Bot {self.token}":
                raise _Reject(401, 0, "401: Unauthorized")
            return await handler(request)

        return checked

    async def _unhandled(self, request: web.Request) -> web.Response:
        self.unhandled.append((request.method, request.path.removeprefix(_API)))
        raise _Reject(404, 0, "404: Not Found")

    # -- REST: identity, gateway, commands -----------------------------------------------------

    async def _get_me(self, request: web.Request) -> web.Response:
        return _json(self._bot_user())

    async def _get_application(self, request: web.Request) -> web.Response:
        return _json(
            {
                "id": str(self.application_id),
                "name": "Headshot Bot",
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot": self._bot_user(),
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": self._user(self.owner_id),
                "team": None,
                "flags": 0,
                "hook": True,
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "tags": [],
                "integration_types_config": {"0": {}},
                "approximate_guild_count": 0,
            }
        )

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        limit = {
            "total": 1000,
            "remaining": 999,
            "reset_after": 14_400_000,
            "max_concurrency": self.max_concurrency,
        }
        return _json(
            {
                "url": self.gateway_url,
                "shards": self.recommended_shards,
                "session_start_limit": limit,
            }
        )

    def _check_application(self, request: web.Request) -> int | None:
        if request.match_info["app_id"] != str(self.application_id):
            raise _Reject(403, 50001, "Missing Access")
        guild = request.match_info.get("guild_id")
        return None if guild is None else int(guild)

    async def _get_commands(self, request: web.Request) -> web.Response:
        guild_id = self._check_application(request)
        stored = self.commands if guild_id is None else self.guild_commands.get(guild_id, [])
        return _json(stored)

    async def _put_commands(self, request: web.Request) -> web.Response:
        guild_id = self._check_application(request)
        body = await request.json()
        problems = _command_problems(body)
        if problems:
            raise _invalid_form(problems)
        previous = self.commands if guild_id is None else self.guild_commands.get(guild_id, [])
        stored = [self._stored_command(command, previous, guild_id) for command in body]
        if guild_id is None:
            self.commands = stored
        else:
            self.guild_commands[guild_id] = stored
        return _json(stored)

    def _stored_command(self, command: JSON, previous: list[JSON], guild_id: int | None) -> JSON:
        """The command as Discord echoes it: ids stay the same across overwrites by name."""
        kind = command.get("type", 1)
        key = (command["name"], kind)
        same = next((c for c in previous if (c["name"], c["type"]) == key), None)
        permissions = command.get("default_member_permissions")
        stored: JSON = {
            **command,
            "id": same["id"] if same else str(self._ids.next()),
            "application_id": str(self.application_id),
            "version": str(self._ids.next()),
            "type": kind,
            "description": command.get("description", ""),
            "options": command.get("options") or [],
            "default_member_permissions": None if permissions is None else str(permissions),
            "dm_permission": command.get("dm_permission", True),
            "contexts": command.get("contexts"),
            "integration_types": command.get("integration_types") or [0],
            "nsfw": command.get("nsfw", False),
        }
        if guild_id is not None:
            stored["guild_id"] = str(guild_id)
        return stored

    # -- REST: interactions and their webhooks --------------------------------------------------

    async def _callback(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(_int(request.match_info["interaction_id"]))
        if interaction is None:
            raise _Reject(404, 10062, "Unknown interaction")
        if request.match_info["token"] != interaction.token:
            raise _Reject(401, 50027, "Invalid Webhook Token")
        body, uploaded = await _read_body(request)
        if interaction.acked_at is not None:
            raise _Reject(400, 40060, "Interaction has already been acknowledged.")
        kind = body.get("type")
        if kind not in _ALLOWED_CALLBACKS.get(interaction.type, set()):
            raise _invalid_form([("type", f"Callback type {kind} is not valid here")])
        data = body.get("data") or {}
        flags = int(data.get("flags") or 0)
        limit = interaction.payload["attachment_size_limit"]
        message: Message | None = None
        if kind == CHANNEL_MESSAGE:
            draft = self._draft(data, uploaded, None, size_limit=limit)
            message = self._create_message(
                interaction.channel_id,
                draft,
                data,
                flags=flags & _SENDABLE_FLAGS,
                interaction=interaction,
            )
        elif kind == DEFERRED_CHANNEL_MESSAGE:
            empty = _Draft("", [], [], [], [])
            message = self._create_message(
                interaction.channel_id,
                empty,
                {},
                flags=flags & EPHEMERAL,
                interaction=interaction,
                loading=True,
            )
        elif kind == MODAL:
            _check_modal(data)
            interaction.modal = data
        else:  # 6 and 7 act on the message whose component was used
            message = self.messages.get(int(interaction.payload["message"]["id"]))
            if message is None or message.deleted:
                raise _Reject(404, 10008, "Unknown Message")
            if kind == UPDATE_MESSAGE:
                draft = self._draft(data, uploaded, message, size_limit=limit)
                self._apply_edit(message, draft, data, edited=True)
        interaction.acked_at = time.monotonic()
        interaction.callback_type = kind
        interaction.ephemeral = bool(flags & EPHEMERAL)
        interaction.original = message
        return _json(_callback_response(interaction, kind, message))

    def _webhook_interaction(self, request: web.Request) -> Interaction:
        if request.match_info["app_id"] != str(self.application_id):
            raise _Reject(404, 10015, "Unknown Webhook")
        interaction = self._by_token.get(request.match_info["token"])
        if interaction is None or time.monotonic() - interaction.sent_at > self.token_lifetime:
            raise _Reject(401, 50027, "Invalid Webhook Token")
        return interaction

    def _webhook_message(self, request: web.Request) -> tuple[Interaction, Message]:
        interaction = self._webhook_interaction(request)
        ident = request.match_info["message_id"]
        if ident == "@original":
            message = interaction.original
        else:
            message = self.messages.get(_int(ident))
            mine = message is interaction.original or (
                message is not None and message.interaction_id == interaction.id
            )
            message = message if mine else None
        if message is None or message.deleted:
            raise _Reject(404, 10008, "Unknown Message")
        return interaction, message

    async def _post_followup(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        body, uploaded = await _read_body(request)
        if interaction.acked_at is None:
            raise _Reject(404, 10015, "Unknown Webhook")
        limit = interaction.payload["attachment_size_limit"]
        original = interaction.original
        if original is not None and original.loading and not original.deleted:
            # Discord's quirk: the first follow-up after a "thinking" defer *is* the response.
            draft = self._draft(body, uploaded, original, size_limit=limit)
            self._apply_edit(original, draft, body, edited=False)
            message = original
        else:
            draft = self._draft(body, uploaded, None, size_limit=limit)
            flags = int(body.get("flags") or 0) & _SENDABLE_FLAGS
            message = self._create_message(
                interaction.channel_id, draft, body, flags=flags, interaction=interaction
            )
            interaction.followups.append(message)
        if request.query.get("wait", "").lower() in ("1", "true"):
            return _json(message.payload())
        return web.Response(status=204)

    async def _get_webhook_message(self, request: web.Request) -> web.Response:
        _, message = self._webhook_message(request)
        return _json(message.payload())

    async def _patch_webhook_message(self, request: web.Request) -> web.Response:
        interaction, message = self._webhook_message(request)
        body, uploaded = await _read_body(request)
        limit = interaction.payload["attachment_size_limit"]
        draft = self._draft(body, uploaded, message, size_limit=limit)
        self._apply_edit(message, draft, body, edited=True)
        return _json(message.payload())

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        _, message = self._webhook_message(request)
        message.deleted = True
        return web.Response(status=204)

    # -- REST: channels ------------------------------------------------------------------------

    def _channel(self, request: web.Request) -> int:
        channel_id = _int(request.match_info["channel_id"])
        if channel_id not in self._channels:
            raise _Reject(404, 10003, "Unknown Channel")
        if channel_id in self._hidden:
            raise _Reject(403, 50001, "Missing Access")
        return channel_id

    def _channel_message(self, request: web.Request) -> Message:
        channel_id = self._channel(request)
        message = self.messages.get(_int(request.match_info["message_id"]))
        if message is None or message.deleted or message.channel_id != channel_id:
            raise _Reject(404, 10008, "Unknown Message")
        if message.ephemeral:  # only reachable through the interaction's webhook
            raise _Reject(404, 10008, "Unknown Message")
        return message

    async def _get_channel(self, request: web.Request) -> web.Response:
        return _json(self._channels[self._channel(request)])

    async def _post_channel_message(self, request: web.Request) -> web.Response:
        channel_id = self._channel(request)
        body, uploaded = await _read_body(request)
        draft = self._draft(body, uploaded, None, size_limit=self.attachment_size_limit)
        flags = int(body.get("flags") or 0) & _SENDABLE_FLAGS & ~EPHEMERAL
        message = self._create_message(channel_id, draft, body, flags=flags)
        return _json(message.payload())

    async def _typing(self, request: web.Request) -> web.Response:
        self._channel(request)
        return web.Response(status=204)

    async def _get_channel_message(self, request: web.Request) -> web.Response:
        return _json(self._channel_message(request).payload())

    async def _patch_channel_message(self, request: web.Request) -> web.Response:
        message = self._channel_message(request)
        body, uploaded = await _read_body(request)
        draft = self._draft(body, uploaded, message, size_limit=self.attachment_size_limit)
        self._apply_edit(message, draft, body, edited=True)
        return _json(message.payload())

    async def _delete_channel_message(self, request: web.Request) -> web.Response:
        self._channel_message(request).deleted = True
        return web.Response(status=204)

    async def _open_dm(self, request: web.Request) -> web.Response:
        body = await request.json()
        user_id = _int(str(body.get("recipient_id")))
        if user_id == 0 or user_id == self.bot_user_id:
            raise _invalid_form([("recipient_id", "Invalid recipient")])
        channel_id = self._dm_channel(user_id)
        self._dm_opened.add(user_id)
        return _json(self._channels[channel_id])

    # -- CDN -----------------------------------------------------------------------------------

    async def _get_cdn_file(self, request: web.Request) -> web.Response:
        stored = self._files.get(_int(request.match_info["file_id"]))
        if stored is None or request.match_info["filename"] != stored.filename:
            raise _Reject(404, 0, "404: Not Found")
        return web.Response(
            body=stored.data, content_type=stored.content_type or "application/octet-stream"
        )

    # -- gateway ---------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        session: GatewaySession | None = None
        try:
            hello = {"heartbeat_interval": self.heartbeat_interval_ms, "_trace": ["fake-gateway"]}
            await _send_op(ws, 10, hello)
            async for frame in ws:
                if frame.type is not WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                op, data = message.get("op"), message.get("d") or {}
                if op == 1:
                    await _send_op(ws, 11, None)
                elif op in (2, 6) and session is not None:
                    await ws.close(code=4005, message=b"Already authenticated.")
                elif op == 2:
                    session = await self._identify(ws, data)
                elif op == 6:
                    session = await self._resume(ws, data)
                # Presence (3), voice (4) and member requests (8) are ignored.
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: JSON) -> GatewaySession | None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        shard_id, shard_count = data.get("shard") or [0, 1]
        if not 0 <= shard_id < shard_count:
            await ws.close(code=4010, message=b"Invalid shard.")
            return None
        if not self._identify_allowed(shard_id):
            await _send_op(ws, 9, False)  # INVALID_SESSION: identify again later
            return None
        session = GatewaySession(
            session_id=secrets.token_hex(16),
            shard_id=shard_id,
            shard_count=shard_count,
            identify=data,
            ws=ws,
        )
        self.sessions.append(session)
        self._sessions_by_id[session.session_id] = session
        self._shards[shard_id] = session
        ready = {
            "v": 10,
            "user": self._bot_user(),
            "guilds": [],
            "private_channels": [],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "shard": [shard_id, shard_count],
            "application": {"id": str(self.application_id), "flags": 0},
            "_trace": ["fake-gateway"],
        }
        await session.dispatch("READY", ready)
        self._changed()
        return session

    def _identify_allowed(self, shard_id: int) -> bool:
        now, bucket = time.monotonic(), shard_id % self.max_concurrency
        window = self.identify_window
        last = max(
            (i.at for i in self.identifies if i.bucket == bucket and not i.refused),
            default=None,
        )
        refused = window is not None and last is not None and now - last < window
        self.identifies.append(Identify(now, shard_id, bucket, refused))
        return not refused

    async def _resume(self, ws: web.WebSocketResponse, data: JSON) -> GatewaySession | None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        session = self._sessions_by_id.get(str(data.get("session_id")))
        if session is None:
            await _send_op(ws, 9, False)  # INVALID_SESSION, not resumable
            return None
        if session.ws is not None and session.ws is not ws:
            await session.ws.close(code=4000)
        sequence = data.get("seq")
        await session.attach(ws, sequence if isinstance(sequence, int) else 0)
        session.resumes += 1
        await session.dispatch("RESUMED", {"_trace": ["fake-gateway"]})
        self._changed()
        return session


# -- helpers -------------------------------------------------------------------------------------


async def _send_op(ws: web.WebSocketResponse, op: int, data: Any) -> None:
    with contextlib.suppress(ConnectionError):
        await ws.send_str(_dumps({"op": op, "d": data, "s": None, "t": None}))


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise AssertionError(problem)


def _describe(predicate: Callable[[], bool]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)


def _role(role_id: int, guild_id: int | None) -> JSON:
    everyone = role_id == guild_id
    return {
        "id": str(role_id),
        "name": "@everyone" if everyone else f"role{role_id}",
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": 0 if everyone else 1,
        "permissions": "0",
        "managed": False,
        "mentionable": not everyone,
        "flags": 0,
    }


def _allowed_in_dms(command: JSON) -> bool:
    contexts = command.get("contexts")
    if contexts is not None:
        return 1 in contexts
    return command.get("dm_permission", True) is not False


async def _read_body(request: web.Request) -> tuple[JSON, dict[int, _Incoming]]:
    """A JSON body, or multipart `payload_json` plus `files[n]` parts."""
    if not request.content_type.startswith("multipart/"):
        body = await request.json() if request.body_exists else {}
        return (body if isinstance(body, dict) else {}), {}
    payload: JSON = {}
    files: dict[int, _Incoming] = {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "payload_json":
            payload = json.loads(await part.text())
        elif part.name and part.name.startswith("files[") and part.name.endswith("]"):
            index = _int(part.name[6:-1])
            ctype = part.headers.get("Content-Type")
            data = bytes(await part.read())
            files[index] = _Incoming(part.filename or f"file{index}", data, ctype)
    return payload, files


def _callback_response(interaction: Interaction, kind: int, message: Message | None) -> JSON:
    """The InteractionCallbackResponse that `?with_response=1` returns."""
    summary: JSON = {
        "id": str(interaction.id),
        "type": interaction.type,
        "activity_instance_id": None,
        "response_message_id": None,
        "response_message_loading": kind == DEFERRED_CHANNEL_MESSAGE,
        "response_message_ephemeral": interaction.ephemeral,
    }
    resource: JSON = {"type": kind}
    if message is not None and kind in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, UPDATE_MESSAGE):
        summary["response_message_id"] = str(message.id)
        if kind != DEFERRED_CHANNEL_MESSAGE:
            resource["message"] = message.payload()
    return {"interaction": summary, "resource": resource}


def _check_modal(data: JSON) -> None:
    problems = []
    if not 1 <= len(str(data.get("custom_id", ""))) <= 100:
        problems.append(("data.custom_id", "Must be between 1 and 100 in length."))
    if not 1 <= len(str(data.get("title", ""))) <= 45:
        problems.append(("data.title", "Must be between 1 and 45 in length."))
    if not 1 <= len(data.get("components") or []) <= 5:
        problems.append(("data.components", "Must be between 1 and 5 in length."))
    if problems:
        raise _invalid_form(problems)


def _content_problems(content: str, embeds: list[JSON], file_count: int) -> list[tuple[str, str]]:
    problems = []
    if len(content) > 2000:
        problems.append(("content", "Must be 2000 or fewer in length."))
    if len(embeds) > 10:
        problems.append(("embeds", "Must be 10 or fewer in length."))
    if file_count > 10:
        problems.append(("attachments", "Must be 10 or fewer in length."))
    total = 0
    for index, embed in enumerate(embeds):
        limits = {"title": 256, "description": 4096}
        for key, limit in limits.items():
            text = str(embed.get(key) or "")
            total += len(text)
            if len(text) > limit:
                problems.append((f"embeds.{index}.{key}", f"Must be {limit} or fewer in length."))
        fields = embed.get("fields") or []
        if len(fields) > 25:
            problems.append((f"embeds.{index}.fields", "Must be 25 or fewer in length."))
        for item in fields:
            total += len(str(item.get("name", ""))) + len(str(item.get("value", "")))
        total += len(str((embed.get("footer") or {}).get("text", "")))
        total += len(str((embed.get("author") or {}).get("name", "")))
    if total > 6000:
        problems.append(("embeds", "Embed size exceeds maximum size of 6000"))
    return problems


def _component_problems(components: list[JSON], flags: int) -> list[tuple[str, str]]:
    """Action rows of 1-5 items, at most 5 rows, valid buttons, unique custom ids ≤ 100."""
    problems: list[tuple[str, str]] = []
    if not flags & COMPONENTS_V2 and len(components) > 5:
        problems.append(("components", "Must be 5 or fewer in length."))
    custom_ids: set[str] = set()
    pending = [(f"components.{i}", c) for i, c in enumerate(components)]
    while pending:
        where, component = pending.pop()
        children = component.get("components") or []
        if component.get("type") == 1 and not 1 <= len(children) <= 5:
            problems.append((f"{where}.components", "Must be between 1 and 5 in length."))
        if component.get("type") == 2:
            problems += _button_problems(component, where)
        custom_id = component.get("custom_id")
        if custom_id is not None:
            if not 1 <= len(str(custom_id)) <= 100:
                problems.append((f"{where}.custom_id", "Must be between 1 and 100 in length."))
            elif custom_id in custom_ids:
                problems.append((f"{where}.custom_id", "Component custom id cannot be duplicated"))
            custom_ids.add(custom_id)
        pending += [(f"{where}.components.{i}", c) for i, c in enumerate(children)]
        if isinstance(component.get("accessory"), dict):
            pending.append((f"{where}.accessory", component["accessory"]))
    return problems


def _button_problems(button: JSON, where: str) -> list[tuple[str, str]]:
    problems = []
    style = button.get("style")
    if style not in range(1, 7):
        problems.append((f"{where}.style", f"Value {style!r} is not a valid button style."))
    if style == 5 and (not button.get("url") or "custom_id" in button):
        problems.append((f"{where}.url", "A link button needs a url and no custom_id."))
    if style in range(1, 5) and "custom_id" not in button:
        problems.append((f"{where}.custom_id", "This field is required"))
    if len(str(button.get("label") or "")) > 80:
        problems.append((f"{where}.label", "Must be 80 or fewer in length."))
    if style != 6 and not button.get("label") and not button.get("emoji"):
        problems.append((f"{where}.label", "A button needs a label or an emoji."))
    return problems


# The locales Discord's clients run in (its "Locales" reference).
DISCORD_LOCALES = frozenset(
    [
        "id",
        "da",
        "de",
        "en-GB",
        "en-US",
        "es-ES",
        "es-419",
        "fr",
        "hr",
        "it",
        "lt",
        "hu",
        "nl",
        "no",
        "pl",
        "pt-BR",
        "ro",
        "fi",
        "sv-SE",
        "vi",
        "tr",
        "cs",
        "el",
        "bg",
        "ru",
        "uk",
        "hi",
        "th",
        "zh-CN",
        "ja",
        "zh-TW",
        "ko",
    ]
)


def _command_problems(commands: Any) -> list[tuple[str, str]]:
    """The checks Discord makes on a bulk overwrite of commands."""
    if not isinstance(commands, list):
        return [("_root", "Expected a list of commands.")]
    problems: list[tuple[str, str]] = []
    seen: set[tuple[str, int]] = set()
    for index, command in enumerate(commands):
        key = (str(command.get("name")), command.get("type", 1))
        if key in seen:
            problems.append((f"{index}.name", "Application command names must be unique"))
        seen.add(key)
        if key[1] == 1:
            problems += _node_problems(command, str(index), "command")
        elif not 1 <= len(key[0]) <= 32:
            problems.append((f"{index}.name", "Must be between 1 and 32 in length."))
    return problems


def _name_problems(node: JSON, where: str) -> list[tuple[str, str]]:
    problems = []
    name, description = str(node.get("name", "")), str(node.get("description", ""))
    if not _COMMAND_NAME.fullmatch(name) or name != name.lower():
        problems.append((f"{where}.name", f"Invalid name {name!r}"))
    if not 1 <= len(description) <= 100:
        problems.append((f"{where}.description", "Must be between 1 and 100 in length."))
    for kind in ("name", "description"):
        localized = node.get(f"{kind}_localizations") or {}
        for locale, text in localized.items():
            at = f"{where}.{kind}_localizations.{locale}"
            if locale not in DISCORD_LOCALES:
                problems.append((at, f"Invalid locale {locale!r}"))
            elif not isinstance(text, str) or not 1 <= len(text) <= (32 if kind == "name" else 100):
                limit = 32 if kind == "name" else 100
                problems.append((at, f"Must be between 1 and {limit} in length."))
    return problems


def _node_problems(node: JSON, where: str, level: str) -> list[tuple[str, str]]:
    """A chat-input command, subcommand group or subcommand and everything below it."""
    problems = _name_problems(node, where)
    options = node.get("options") or []
    if len(options) > 25:
        problems.append((f"{where}.options", "Must be 25 or fewer in length."))
    allowed = {"command": {1, 2, *range(3, 12)}, "group": {1}, "subcommand": set(range(3, 12))}
    optional_seen = False
    names: set[str] = set()
    for index, option in enumerate(options):
        at, kind = f"{where}.options.{index}", option.get("type")
        if kind not in allowed[level]:
            problems.append((f"{at}.type", f"Option type {kind} is not allowed in a {level}"))
            continue
        if option.get("name") in names:
            problems.append((f"{at}.name", "Option names must be unique"))
        names.add(option.get("name"))
        if kind in _NESTING:
            problems += _node_problems(option, at, "subcommand" if kind == 1 else "group")
        else:
            problems += _value_option_problems(option, at, optional_seen)
            optional_seen = optional_seen or not option.get("required")
    subcommands = [o for o in options if o.get("type") in _NESTING]
    if subcommands and len(subcommands) != len(options):
        problems.append((f"{where}.options", "Subcommands cannot be mixed with other options"))
    return problems


def _value_option_problems(option: JSON, at: str, optional_seen: bool) -> list[tuple[str, str]]:
    problems = _name_problems(option, at)
    if option.get("required") and optional_seen:
        problems.append((f"{at}.required", "Required options must come before optional ones"))
    if len(option.get("choices") or []) > 25:
        problems.append((f"{at}.choices", "Must be 25 or fewer in length."))
    low, high = option.get("min_value"), option.get("max_value")
    if low is not None and high is not None and low > high:
        problems.append((f"{at}.max_value", "Must be greater than or equal to min_value."))
    return problems
