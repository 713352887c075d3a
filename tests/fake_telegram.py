"""A fake Telegram Bot API for end-to-end tests: the Bot API and file downloads on 127.0.0.1.

The real python-telegram-bot runs against it unchanged once pointed at it:

    ApplicationBuilder().token(fake.token)
        .base_url(f"{fake.api_base}/bot").base_file_url(f"{fake.api_base}/file/bot")

(or `telegram.Bot(fake.token, base_url=..., base_file_url=...)`). Tests play the users:
`send_text`, `send_photo`, `send_document`, `send_sticker` and `press` build what a Telegram
client would cause and queue it as an update, which the bot gets from getUpdates or, once it set
a webhook, as a POST to it. Every request is recorded as a `Call` and its effect kept: the chats'
messages with edits and deletions applied, files, callback answers, command menus, the webhook.
Copied from Telegram, quirks included:

- answers are `{"ok": true, "result": ...}` or `{"ok": false, "error_code": N, "description":
  "Bad Request: ..."}` in Telegram's words; 401 for a wrong token, 404 for an unknown method,
  429 with `parameters.retry_after` where `flood` says so; method names are case-insensitive;
- parameters come as a query, JSON, a form or multipart: PTB sends JSON-typed values as JSON
  strings in form fields and files as parts, which sendMediaGroup names with `attach://`;
- getUpdates long-polls, forgets updates below `offset`, filters by `allowed_updates` (by default
  all but chat_member and reactions), ends an older poll with 409 when a newer one comes, and is
  409 while a webhook is set; with a webhook each update is POSTed in turn with the secret header,
  retried a few times on failure and then dropped, as Telegram gives up;
- privacy mode is on, as for a new bot: in a group where the bot is no admin it gets only
  commands (bare or addressed to it) and replies to its own messages; the rest is stored, unsent;
- messages carry `bot_command` entities (offsets in UTF-16 units); parse_mode HTML is parsed into
  text and entities, with Telegram's "can't parse entities" errors; text is 1-4096 characters,
  captions at most 1024, callback_data 1-64 bytes;
- editing text or caption without reply_markup removes the inline keyboard, and an edit that
  changes nothing is "message is not modified";
- a user's private chat can be written to once the user wrote to the bot (`started`), and no
  longer once they blocked it (403 either way); in groups the bot deletes others' messages only
  as an admin, and nothing once it was removed from the group (403);
- a message sent 48 hours ago or more can no longer be deleted ("message can't be deleted");
  `age` makes one that old. It can still be edited: editMessageMedia puts a new photo or
  document in, an album item only of its album's kind;
- photos get Pillow thumbnails before the original, the largest and last size; getFile refuses
  files over 20 MB; uploads over 10 MB (photos) or 50 MB (documents) are refused; an album of
  one item is sent as an ordinary message, as TDLib does.

Not modelled: parse modes Markdown and MarkdownV2 (the fake answers 400, so that it shows at
once), Telegram re-encoding photos (the largest size is the original bytes), automatic entities
other than bot commands (mentions, URLs, hashtags), trimming of surrounding whitespace, files sent
by URL (always "failed to get HTTP URL content"), media other than photos, documents and
stickers, inline mode, forums, channels, payments, chat_member updates when `set_status` changes
someone, rate limits beyond `flood`, editMessageMedia on a text message, HTTPS-only webhook URLs
(http://127.0.0.1 is accepted), and any effect of logOut or close.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import inspect
import io
import json
import mimetypes
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Self, TypeVar, cast

import aiohttp
from aiohttp import web
from PIL import Image

JSON = dict[str, Any]
T = TypeVar("T")

GROUP_ANONYMOUS_BOT_ID = 1087968824
GROUP_ANONYMOUS_BOT: JSON = {"id": GROUP_ANONYMOUS_BOT_ID, "is_bot": True, "first_name": "Group"}
GROUP_ANONYMOUS_BOT["username"] = "GroupAnonymousBot"

_MB = 1024 * 1024
MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_DOWNLOAD = 20 * _MB
MAX_PHOTO = 10 * _MB
MAX_UPLOAD = 50 * _MB
# Bots delete messages only within 48 hours of their sending.
DELETE_WINDOW = 48 * 3600

_NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly the "
    "same as a current content and reply markup of the message"
)
_OLD_QUERY = "query is too old and response timeout expired or query ID is invalid"
_MEMBER_STATUSES = ("creator", "administrator", "member")
_STATUSES = (*_MEMBER_STATUSES, "left", "kicked")
_ADMINS = ("creator", "administrator")
_INT_FIELDS = frozenset(
    {"chat_id", "message_id", "user_id", "offset", "limit", "timeout", "cache_time"}
    | {"reply_to_message_id", "max_connections", "message_thread_id"}
)
_BOOL_FIELDS = frozenset(
    {"show_alert", "drop_pending_updates", "disable_notification", "protect_content"}
    | {"allow_sending_without_reply", "has_spoiler", "disable_content_type_detection"}
)
_JSON_FIELDS = frozenset(
    {"reply_markup", "media", "commands", "scope", "allowed_updates", "entities"}
    | {"caption_entities", "reply_parameters", "link_preview_options"}
)
_CHAT_ACTIONS = frozenset(
    {"typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice"}
    | {"upload_document", "choose_sticker", "find_location", "record_video_note"}
    | {"upload_video_note"}
)
_BUTTON_KINDS = frozenset(
    {"login_url", "switch_inline_query", "switch_inline_query_current_chat", "pay"}
    | {"switch_inline_query_chosen_chat", "callback_game", "web_app", "copy_text"}
)
_DEFAULT_EXCLUDED_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
_METHODS = (  # noqa: SIM905 (one string reads better than 24)
    "getMe getUpdates setWebhook deleteWebhook getWebhookInfo getFile sendMessage "
    "editMessageText editMessageCaption editMessageReplyMarkup editMessageMedia deleteMessage "
    "sendPhoto "
    "sendDocument sendMediaGroup sendChatAction answerCallbackQuery setMyCommands getMyCommands "
    "deleteMyCommands getChatMember getChatAdministrators getChat close logOut"
).split()
_COMMAND_NAME = re.compile(r"[a-z0-9_]{1,32}")
_SECRET = re.compile(r"[A-Za-z0-9_-]+")
_BOT_COMMAND = re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?![A-Za-z0-9_@/])")
_ACCEPTED_GIFTS = dict.fromkeys(
    ("unlimited_gifts", "limited_gifts", "unique_gifts", "premium_subscription"), False
) | {"gifts_from_channels": False}
_ADMIN_RIGHTS = {
    "can_be_edited": False,
    "can_manage_chat": True,
    "can_delete_messages": True,
    "can_manage_video_chats": True,
    "can_restrict_members": True,
    "can_promote_members": False,
    "can_change_info": True,
    "can_invite_users": True,
    "can_post_stories": False,
    "can_edit_stories": False,
    "can_delete_stories": False,
    "can_pin_messages": True,
    "can_manage_topics": False,
}


@dataclass
class Call:
    """One Bot API request the bot made, with its decoded parameters and the status answered."""

    method: str  # canonical, e.g. "sendMessage"; as requested when the method is unknown
    params: dict[str, Any]  # JSON-typed fields parsed; uploads as `Upload` (bytes)
    at: float  # time.monotonic() on arrival
    status: int  # 0 while a long poll is still pending


class Upload(bytes):
    """An uploaded file: its bytes, with the multipart part's file name and content type."""

    filename: str
    content_type: str

    @classmethod
    def of(cls, data: bytes, filename: str, content_type: str) -> Upload:
        upload = cls(data)
        upload.filename, upload.content_type = filename, content_type
        return upload


@dataclass(eq=False)
class _File:
    file_id: str
    unique_id: str
    data: bytes
    size: int  # what Telegram claims, which a test may set above len(data)
    path: str
    name: str | None = None
    mime: str | None = None

    def info(self) -> JSON:
        return {
            "file_id": self.file_id,
            "file_unique_id": self.unique_id,
            "file_size": self.size,
            "file_path": self.path,
        }


class _ApiError(Exception):
    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.retry_after = status, description, retry_after

    def body(self) -> JSON:
        body: JSON = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def _bad(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


def _cant_parse(problem: str) -> _ApiError:
    return _bad(f"can't parse entities: {problem}")


def _u16(text: str) -> int:
    """Length in UTF-16 code units, Telegram's unit for entity offsets."""
    return len(text.encode("utf-16-le")) // 2


def _u16_slice(text: str, offset: int, length: int) -> str:
    return text.encode("utf-16-le")[2 * offset : 2 * (offset + length)].decode("utf-16-le")


def _decode(key: str, value: Any) -> Any:
    """A form or query value as Telegram reads it: ints, booleans and JSON by field name."""
    if not isinstance(value, str):
        return value
    if key in _INT_FIELDS:
        with contextlib.suppress(ValueError):
            return int(value)
    elif key in _BOOL_FIELDS:
        return value.lower() in ("true", "1")
    elif key in _JSON_FIELDS:
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


async def _read_params(request: web.Request) -> JSON:
    raw: JSON = dict(request.query)
    if request.method == "POST" and request.body_exists:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise _bad("can't parse JSON encoded request") from None
            raw.update(body if isinstance(body, dict) else {})
        else:
            try:
                form = await request.post()
            except web.HTTPRequestEntityTooLarge:
                raise _ApiError(413, "Request Entity Too Large") from None
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    data = value.file.read()
                    raw[key] = Upload.of(data, value.filename, value.content_type)
                else:
                    raw[key] = value
    params = {key: _decode(key, value) for key, value in raw.items()}
    if isinstance(params.get("media"), list):  # sendMediaGroup: resolve attach://part
        params["media"] = [_attach(item, params) for item in params["media"]]
    elif isinstance(params.get("media"), dict):  # editMessageMedia
        params["media"] = _attach(params["media"], params)
    return params


def _attach(item: Any, params: JSON) -> Any:
    media = item.get("media") if isinstance(item, dict) else None
    if isinstance(media, str) and media.startswith("attach://"):
        part = params.get(media.removeprefix("attach://"))
        if isinstance(part, Upload):
            return {**item, "media": part}
    return item


def _with_commands(text: str, entities: Iterable[JSON]) -> list[JSON]:
    """The entities plus a bot_command for every /command outside code and links."""
    found = [dict(entity) for entity in entities]
    taken = [
        (e["offset"], e["offset"] + e["length"])
        for e in found
        if e.get("type") in ("code", "pre", "text_link", "bot_command")
    ]
    for match in _BOT_COMMAND.finditer(text):
        offset = _u16(text[: match.start()])
        if not any(start <= offset < end for start, end in taken):
            found.append({"offset": offset, "length": _u16(match.group()), "type": "bot_command"})
    return sorted(found, key=lambda entity: (entity["offset"], -entity["length"]))


# -- parse modes -----------------------------------------------------------------------------

_HTML_TAGS = {
    **dict.fromkeys(("b", "strong"), "bold"),
    **dict.fromkeys(("i", "em"), "italic"),
    **dict.fromkeys(("u", "ins"), "underline"),
    **dict.fromkeys(("s", "strike", "del"), "strikethrough"),
    **dict.fromkeys(("tg-spoiler", "span"), "spoiler"),
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
}
_HTML_ATTRIBUTE = re.compile(r"""([a-zA-Z-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""")
_HTML_SPECIAL = re.compile(r"[<&]")
_HTML_REFERENCE = re.compile(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")


def _parse_html(source: str) -> tuple[str, list[JSON]]:
    out: list[str] = []
    entities: list[JSON] = []
    stack: list[tuple[str, JSON | None]] = []
    length = i = 0
    while i < len(source):
        char = source[i]
        if char != "<":  # text, or an entity reference like &lt;
            match = _HTML_REFERENCE.match(source, i) if char == "&" else None
            stop = _HTML_SPECIAL.search(source, i + 1)
            chunk = (
                html.unescape(match.group())
                if match
                else source[i : stop.start() if stop else None]
            )
            out.append(chunk)
            length += _u16(chunk)
            i = match.end() if match else i + len(chunk)
            continue
        at = len(source[:i].encode())
        close = source.find(">", i)
        if close == -1:
            raise _cant_parse(f"Unclosed start tag at byte offset {at}")
        inner = source[i + 1 : close]
        if inner.startswith("/"):
            name = inner[1:].strip().lower()
            if not stack:
                raise _cant_parse(f'Unexpected end tag "{name}" at byte offset {at}')
            open_name, entity = stack.pop()
            if name != open_name:
                expected = f'expected "</{open_name}>", found "</{name}>"'
                raise _cant_parse(f"Unmatched end tag at byte offset {at}, {expected}")
            if entity is not None and length > entity["offset"]:
                entities.append({**entity, "length": length - entity["offset"]})
        else:
            name = re.split(r"[\s/>]", inner, maxsplit=1)[0].lower()
            attributes = {
                m[0].lower(): html.unescape(m[1] or m[2] or m[3])
                for m in _HTML_ATTRIBUTE.findall(inner)
            }
            if name not in _HTML_TAGS or (
                name == "span" and attributes.get("class") != "tg-spoiler"
            ):
                raise _cant_parse(f'Unsupported start tag "{name}" at byte offset {at}')
            entity: JSON | None = {"type": _HTML_TAGS[name], "offset": length}
            if name == "a":
                entity = {**entity, "url": attributes["href"]} if attributes.get("href") else None
            elif name == "blockquote" and "expandable" in inner.split():
                entity = {**entity, "type": "expandable_blockquote"}
            elif name == "code" and stack and stack[-1][0] == "pre":
                language = attributes.get("class", "").removeprefix("language-")
                pre = stack[-1][1]
                if language and pre is not None:
                    pre["language"] = language
                entity = None  # <pre><code class="language-x"> is one pre entity
            stack.append((name, entity))
        i = close + 1
    if stack:
        raise _cant_parse(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    return "".join(out), entities


def _formatted(params: JSON, text_key: str, entities_key: str) -> tuple[str, list[JSON]]:
    """The text as Telegram stores it: parse_mode applied, bot commands marked."""
    value = params.get(text_key)
    text = "" if value is None else str(value)
    mode = str(params.get("parse_mode") or "").lower()
    explicit = params.get(entities_key)
    if isinstance(explicit, list):
        entities = explicit
    elif mode == "html":
        text, entities = _parse_html(text)
    elif mode in ("markdown", "markdownv2"):
        raise _bad(f"the fake parses no {params['parse_mode']}: use HTML, or extend the fake")
    elif mode:
        raise _bad("unsupported parse_mode")
    else:
        entities = []
    return text, _with_commands(text, entities)


def _caption(params: JSON) -> JSON:
    caption, entities = _formatted(params, "caption", "caption_entities")
    if len(caption) > MAX_CAPTION:
        raise _bad("message caption is too long")
    return {"caption": caption, "caption_entities": entities} if caption else {}


def _text(params: JSON) -> JSON:
    text, entities = _formatted(params, "text", "entities")
    if not text.strip():
        raise _bad("message text is empty")
    if len(text) > MAX_TEXT:
        raise _bad("message is too long")
    return {"text": text, "entities": entities} if entities else {"text": text}


def _markup(params: JSON) -> JSON | None:
    """The inline keyboard to store on the message (None for other keyboards, or no buttons)."""
    markup = params.get("reply_markup")
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise _bad("can't parse reply keyboard markup JSON object")
    rows = markup.get("inline_keyboard")
    if rows is None:
        return None
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _bad('field "inline_keyboard" of the InlineKeyboardMarkup must be an Array of Arrays')
    for button in (button for row in rows for button in row):
        if not isinstance(button, dict) or not isinstance(button.get("text"), str):
            raise _bad('can\'t parse inline keyboard button: Field "text" must be of type String')
        if "callback_data" in button:
            data = button["callback_data"]
            if not isinstance(data, str) or not 1 <= len(data.encode()) <= 64:
                raise _bad("BUTTON_DATA_INVALID")
        elif "url" in button:
            if not re.fullmatch(r"(https?|tg)://\S+", str(button["url"])):
                raise _bad("BUTTON_URL_INVALID")
        elif not _BUTTON_KINDS & button.keys():
            raise _bad(
                "can't parse inline keyboard button: Text buttons are unallowed in the inline "
                "keyboard"
            )
    return markup if any(rows) else None


def _without_reply(message: JSON) -> JSON:
    return {key: value for key, value in message.items() if key != "reply_to_message"}


def _photo_size(file: _File, width: int, height: int) -> JSON:
    return {
        "file_id": file.file_id,
        "file_unique_id": file.unique_id,
        "file_size": file.size,
        "width": width,
        "height": height,
    }


def _document(file: _File) -> JSON:
    document = {
        "file_name": file.name,
        "mime_type": file.mime,
        "file_id": file.file_id,
        "file_unique_id": file.unique_id,
        "file_size": file.size,
    }
    return {key: value for key, value in document.items() if value is not None}


def _chat_key(update: JSON) -> object:
    """The chat an update belongs to (its messages must arrive in order), or the update itself."""
    for kind, body in update.items():
        if kind == "update_id" or not isinstance(body, dict):
            continue
        message = body.get("message") if kind == "callback_query" else body
        chat = (message or {}).get("chat") if isinstance(message, dict) else None
        if isinstance(chat, dict) and "id" in chat:
            return chat["id"]
    return ("update", update.get("update_id"))


def _describe(predicate: Callable[..., Any]) -> str:
    with contextlib.suppress(OSError, TypeError):
        return inspect.getsource(predicate).strip()
    return repr(predicate)


# -- the fake --------------------------------------------------------------------------------


class FakeTelegram:
    """The Bot API of one bot, and its file downloads, served on 127.0.0.1."""

    def __init__(
        self,
        *,
        token: str = "123456:TEST-token",  # noqa: S107
        bot_id: int = 123456,
        bot_username: str = "headshot_test_bot",
        privacy_mode: bool = True,
    ) -> None:
        self.token = token
        self.bot_id = bot_id
        self.bot_username = bot_username
        self.privacy_mode = privacy_mode
        self.api_base = ""
        self.bot_user: JSON = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Headshot Test Bot",
            "username": bot_username,
        }

        self.calls: list[Call] = []
        self.started: set[int] = set()
        self.deleted: list[tuple[int, int]] = []
        self.answers: dict[str, JSON] = {}
        self.commands: dict[str, list[JSON]] = {}
        self.webhook: JSON | None = None
        self.webhook_deliveries: list[tuple[int, int]] = []  # (update_id, status; 0: no answer)
        self.webhook_attempts = 3
        # Updates POSTed at once (Telegram's setWebhook max_connections); one chat's updates
        # still go one at a time, in order. 1 (the default here): strictly one after another.
        self.webhook_connections = 1
        # Timings, by (chat id, message id): when a user's message was first POSTed to the
        # webhook, and when the bot first replied to it (time.monotonic()).
        self.first_posts: dict[tuple[int, int], float] = {}
        self.first_replies: dict[tuple[int, int], float] = {}
        self.webhook_retry_delay = 0.1
        self.flood: dict[str, int] = {}
        self.downloads: list[str] = []  # file paths fetched from /file/bot<token>/

        self._users: dict[int, JSON] = {}
        self._chats: dict[int, JSON] = {}
        self._members: dict[tuple[int, int], str] = {}
        self._anonymous: set[tuple[int, int]] = set()
        self._blocked: set[int] = set()
        self._messages: dict[int, dict[int, JSON]] = {}
        self._last_message_id: dict[int, int] = {}
        self._files: dict[str, _File] = {}
        self._paths: dict[str, _File] = {}
        self._updates: list[JSON] = []
        self._next_update_id = 10_001
        self._allowed_updates: list[str] | None = None
        self._callbacks: dict[str, bool] = {}  # callback query id -> answered
        self._poller = 0  # the latest getUpdates; older ones end with 409
        self._webhook_error: tuple[int, str] | None = None
        self._sticker: JSON | None = None
        self._event: asyncio.Event | None = None
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._methods: dict[str, Callable[[JSON], Any]] = {
            name: getattr(self, "_" + re.sub(r"([A-Z])", r"_\1", name).lower()) for name in _METHODS
        }
        self._canonical = {name.lower(): name for name in self._methods}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        self._closing = False
        app = web.Application(client_max_size=MAX_UPLOAD + 10 * _MB)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.api_base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return self.api_base

    async def stop(self) -> None:
        self._closing = True
        self._changed()  # long polls answer at once
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- waiting -----------------------------------------------------------------------------

    def _changed(self) -> None:
        """Wake everything waiting on the fake's state (tests, long polls, the webhook)."""
        if self._event is not None:
            self._event.set()
            self._event = None

    async def _next_change(self, timeout: float | None) -> None:  # noqa: ASYNC109
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()

    async def wait_for(
        self,
        predicate: Callable[[], T | bool | None],
        timeout: float = 10.0,  # noqa: ASYNC109 (the tests' API)
    ) -> T:
        """The first truthy value of `predicate()`, re-evaluated after every change of state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if value:
                return cast(T, value)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"still false after {timeout}s: {_describe(predicate)}\n{self._summary()}"
                )
            await self._next_change(remaining)

    async def wait_for_call(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> Call:
        """The first call to `method` (whatever its status) that satisfies `predicate`."""
        method = self._canonical.get(method.lower(), method)
        return await self.wait_for(
            lambda: next(
                (c for c in self.calls if c.method == method and (not predicate or predicate(c))),
                None,
            ),
            timeout,
        )

    async def wait_for_answer(self, callback_query_id: str, timeout: float = 10.0) -> JSON:  # noqa: ASYNC109
        return await self.wait_for(lambda: self.answers.get(callback_query_id), timeout)

    def _summary(self) -> str:
        recent = [(call.method, call.status) for call in self.calls[-8:]]
        return (
            f"last calls {recent}, {len(self._updates)} updates pending, webhook {self.webhook}, "
            f"chats with messages {sorted(self._messages)}"
        )

    # -- what tests read -----------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        method = self._canonical.get(method.lower(), method)
        return [call for call in self.calls if call.method == method]

    def messages(self, chat_id: int) -> list[JSON]:
        """The chat's current messages, oldest first: deleted ones gone, edits applied."""
        return copy.deepcopy(list(self._messages.get(chat_id, {}).values()))

    def bot_messages(self, chat_id: int) -> list[JSON]:
        return [m for m in self.messages(chat_id) if m["from"]["id"] == self.bot_id]

    def message(self, chat_id: int, message_id: int) -> JSON | None:
        return copy.deepcopy(self._messages.get(chat_id, {}).get(message_id))

    def age(self, chat_id: int, message_id: int, seconds: float = DELETE_WINDOW) -> None:
        """Make a message as if sent `seconds` earlier (by default too old to delete)."""
        self._messages[chat_id][message_id]["date"] -= int(seconds)

    def file_bytes(self, file_id: str) -> bytes:
        if file_id not in self._files:
            raise KeyError(f"no file {file_id!r}")
        return self._files[file_id].data

    # -- people and chats --------------------------------------------------------------------

    def add_user(
        self,
        user_id: int,
        first_name: str = "User",
        username: str | None = None,
        *,
        language_code: str = "en",
    ) -> JSON:
        """A Telegram user, whose app runs in `language_code` (sent with each of their
        updates); their private chat (id = user_id) exists, but see `started`."""
        if user_id <= 0:
            raise ValueError("user ids are positive")
        user: JSON = {"id": user_id, "is_bot": False, "first_name": first_name}
        chat: JSON = {"id": user_id, "first_name": first_name}
        if username:
            user["username"] = chat["username"] = username
        user["language_code"] = language_code
        self._users[user_id] = user
        self._chats[user_id] = {**chat, "type": "private"}
        return copy.deepcopy(user)

    def add_group(
        self,
        chat_id: int,
        title: str = "Group",
        *,
        owner: int | None = None,
        admins: Iterable[int] = (),
        members: Iterable[int] = (),
    ) -> JSON:
        """A supergroup the bot is a member of (name the bot's id in `admins` for an admin)."""
        if chat_id >= 0:
            raise ValueError("group chat ids are negative, e.g. -1001234")
        self._chats[chat_id] = {"id": chat_id, "title": title, "type": "supergroup"}
        self._members.setdefault((chat_id, self.bot_id), "member")
        people = [(owner, "creator")] if owner is not None else []
        people += [(user, "administrator") for user in admins]
        people += [(user, "member") for user in members]
        for user_id, status in people:
            self._ensure_user(user_id)
            self._members[(chat_id, user_id)] = status
        return copy.deepcopy(self._chats[chat_id])

    def set_status(self, chat_id: int, user_id: int, status: str) -> None:
        if status not in _STATUSES:
            raise ValueError(f"status is one of {_STATUSES}")
        if chat_id not in self._chats or chat_id > 0:
            raise AssertionError(f"no group {chat_id}: add_group it first")
        self._ensure_user(user_id)
        self._members[(chat_id, user_id)] = status

    def block(self, user_id: int) -> None:
        """The user blocked the bot (writing to it again unblocks)."""
        self._blocked.add(user_id)

    def _ensure_user(self, user_id: int) -> JSON:
        if user_id == self.bot_id:
            return self.bot_user
        if user_id not in self._users:
            self.add_user(user_id)
        return self._users[user_id]

    def _status(self, chat_id: int, user_id: int) -> str:
        if chat_id > 0:
            return "member" if user_id in (chat_id, self.bot_id) else "left"
        return self._members.get((chat_id, user_id), "left")

    # -- what users do -------------------------------------------------------------------------

    def send_text(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        *,
        reply_to: int | None = None,
        anonymous_admin: bool = False,
        entities: list[JSON] | None = None,
    ) -> JSON:
        if not text:
            raise AssertionError("Telegram clients send no empty messages")
        content: JSON = {"text": text}
        if found := _with_commands(text, entities or []):
            content["entities"] = found
        return self._user_sends(chat_id, user_id, content, reply_to, anonymous_admin)

    def send_photo(
        self,
        chat_id: int,
        user_id: int,
        data: bytes,
        *,
        caption: str | None = None,
        reply_to: int | None = None,
        anonymous_admin: bool = False,
    ) -> JSON:
        try:
            sizes = self._photo_sizes(data)
        except Exception as exc:
            raise AssertionError("send_photo needs an image Pillow can open") from exc
        content = {"photo": sizes, **_caption({"caption": caption})}
        return self._user_sends(chat_id, user_id, content, reply_to, anonymous_admin)

    def send_document(
        self,
        chat_id: int,
        user_id: int,
        data: bytes,
        *,
        file_name: str,
        mime_type: str,
        caption: str | None = None,
        reply_to: int | None = None,
        size: int | None = None,
        anonymous_admin: bool = False,
    ) -> JSON:
        """A file sent as a document; `size` claims a size other than len(data)."""
        file = self._register(data, f"documents/file{PurePosixPath(file_name).suffix}", size)
        file.name, file.mime = file_name, mime_type
        content = {"document": _document(file), **_caption({"caption": caption})}
        return self._user_sends(chat_id, user_id, content, reply_to, anonymous_admin)

    def send_sticker(
        self,
        chat_id: int,
        user_id: int,
        *,
        reply_to: int | None = None,
        anonymous_admin: bool = False,
    ) -> JSON:
        if self._sticker is None:
            buffer = io.BytesIO()
            Image.new("RGBA", (512, 512), (250, 200, 40, 255)).save(buffer, "WEBP")
            file = self._register(buffer.getvalue(), "stickers/file.webp")
            self._sticker = {
                "file_id": file.file_id,
                "file_unique_id": file.unique_id,
                "type": "regular",
                "width": 512,
                "height": 512,
                "is_animated": False,
                "is_video": False,
                "emoji": "🙂",
                "set_name": "HeadshotTestStickers",
                "file_size": file.size,
            }
        content = {"sticker": copy.deepcopy(self._sticker)}
        return self._user_sends(chat_id, user_id, content, reply_to, anonymous_admin)

    def press(
        self, chat_id: int, user_id: int, message_id: int, data: str, *, forged: bool = False
    ) -> str:
        """Press the inline button with this callback_data on a bot message; returns the
        callback query's id. Unless `forged`, the message must currently show such a button."""
        message = self._messages.get(chat_id, {}).get(message_id)
        if message is None:
            raise AssertionError(f"no message {message_id} in chat {chat_id}")
        if message["from"]["id"] != self.bot_id:
            raise AssertionError(f"message {message_id} is not the bot's: it has no buttons")
        keyboard = (message.get("reply_markup") or {}).get("inline_keyboard", [])
        datas = [button.get("callback_data") for row in keyboard for button in row]
        if not forged and data not in datas:
            raise AssertionError(f"message {message_id} has no button {data!r}; it has {datas}")
        user = self._sender(chat_id, user_id)
        query_id = str(secrets.randbits(62))
        self._callbacks[query_id] = False
        query = {
            "id": query_id,
            "from": user,
            "message": message,
            "chat_instance": str(chat_id * 7_919_000_003 % 2**62),
            "data": data,
        }
        self.enqueue({"callback_query": query})
        return query_id

    def enqueue(self, update: JSON) -> int:
        """Queue a raw update (numbered if it has no update_id); returns its update_id."""
        update = copy.deepcopy(update)
        update.setdefault("update_id", self._next_update_id)
        self._next_update_id = max(self._next_update_id, update["update_id"] + 1)
        self._updates.append(update)
        self._changed()
        return update["update_id"]

    def add_file(
        self, data: bytes, *, size: int | None = None, path_hint: str = "documents/file"
    ) -> JSON:
        """Register a file, e.g. to claim a size (`size`) larger than its bytes."""
        return self._register(data, path_hint, size).info()

    def _sender(self, chat_id: int, user_id: int, anonymous: bool = False) -> JSON:
        user = self._ensure_user(user_id)
        if chat_id > 0:
            if chat_id != user_id or anonymous:
                raise AssertionError(f"chat {chat_id} is the private chat of user {chat_id}")
            self.started.add(user_id)
            self._blocked.discard(user_id)
        elif chat_id not in self._chats:
            raise AssertionError(f"no group {chat_id}: add_group it first")
        elif self._status(chat_id, user_id) not in (_ADMINS if anonymous else _MEMBER_STATUSES):
            status = self._status(chat_id, user_id)
            raise AssertionError(f"user {user_id} is {status!r} in {chat_id}: they cannot do that")
        return user

    def _user_sends(
        self, chat_id: int, user_id: int, content: JSON, reply_to: int | None, anonymous: bool
    ) -> JSON:
        user = self._sender(chat_id, user_id, anonymous)
        reply = None
        if reply_to is not None:
            reply = self._messages.get(chat_id, {}).get(reply_to)
            if reply is None:
                raise AssertionError(f"no message {reply_to} in chat {chat_id} to reply to")
        if anonymous:
            self._anonymous.add((chat_id, user_id))
        message = self._store(
            chat_id,
            GROUP_ANONYMOUS_BOT if anonymous else user,
            content,
            reply=reply,
            sender_chat=self._chats[chat_id] if anonymous else None,
        )
        if self._bot_receives(chat_id, message):
            self.enqueue({"message": message})
        return message

    def _bot_receives(self, chat_id: int, message: JSON) -> bool:
        """Whether a user's message reaches the bot, privacy mode considered."""
        if chat_id > 0:
            return True
        status = self._status(chat_id, self.bot_id)
        if status not in _MEMBER_STATUSES:
            return False
        if not self.privacy_mode or status in _ADMINS:
            return True
        reply = message.get("reply_to_message")
        if reply is not None and reply["from"]["id"] == self.bot_id:
            return True
        text = message.get("text") or message.get("caption") or ""
        for entity in message.get("entities", []) + message.get("caption_entities", []):
            if entity["type"] == "bot_command":
                command = _u16_slice(text, entity["offset"], entity["length"])
                target = command.partition("@")[2]
                if not target or target.lower() == self.bot_username.lower():
                    return True
        return False

    # -- storage -------------------------------------------------------------------------------

    def _store(
        self,
        chat_id: int,
        sender: JSON,
        content: JSON,
        *,
        reply: JSON | None = None,
        markup: JSON | None = None,
        sender_chat: JSON | None = None,
    ) -> JSON:
        message_id = self._last_message_id.get(chat_id, 0) + 1
        self._last_message_id[chat_id] = message_id
        message: JSON = {"message_id": message_id, "from": sender}
        if sender_chat is not None:
            message["sender_chat"] = sender_chat
        message |= {"chat": self._chats[chat_id], "date": int(time.time())}
        if reply is not None:
            message["reply_to_message"] = _without_reply(reply)
            if sender is self.bot_user:
                self.first_replies.setdefault((chat_id, reply["message_id"]), time.monotonic())
        message |= {key: value for key, value in content.items() if value}
        if markup is not None:
            message["reply_markup"] = markup
        message = copy.deepcopy(message)
        self._messages.setdefault(chat_id, {})[message_id] = message
        self._changed()
        return copy.deepcopy(message)

    def _register(self, data: bytes, path_hint: str, size: int | None = None) -> _File:
        hint = PurePosixPath(path_hint)
        path = str(hint.with_name(f"{hint.stem}_{len(self._files) + 1}{hint.suffix}"))
        file = _File(
            file_id="BQAC" + secrets.token_urlsafe(36),
            unique_id="AgAD" + secrets.token_urlsafe(9),
            data=bytes(data),
            size=len(data) if size is None else size,
            path=path,
        )
        self._files[file.file_id] = self._paths[path] = file
        return file

    def _photo_sizes(self, data: bytes, original: _File | None = None) -> list[JSON]:
        """Pillow thumbnails (90 px, and 320 px for larger images), then the original."""
        sizes = []
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
            extension = {"JPEG": "jpg"}.get(image.format or "", (image.format or "jpg").lower())
            for box in (90, 320):
                if box > 90 and max(width, height) <= box:
                    break
                thumb = image.convert("RGB")
                thumb.thumbnail((box, box))
                buffer = io.BytesIO()
                thumb.save(buffer, "JPEG", quality=80)
                file = self._register(buffer.getvalue(), "photos/file.jpg")
                sizes.append(_photo_size(file, *thumb.size))
        if original is None:
            original = self._register(data, f"photos/file.{extension}")
        sizes.append(_photo_size(original, width, height))
        return sizes

    # -- the HTTP side -------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        name = request.match_info["method"]
        method = self._canonical.get(name.lower())
        failure: _ApiError | None = None
        try:
            params = await _read_params(request)
        except _ApiError as error:
            params, failure = {}, error
        call = Call(method or name, params, at, 0)
        self.calls.append(call)
        try:
            if request.match_info["token"] != self.token:
                raise _ApiError(401, "Unauthorized")
            if method is None:
                raise _ApiError(404, "Not Found")
            if failure is not None:
                raise failure
            if self.flood.get(method, 0) > 0:
                self.flood[method] -= 1
                raise _ApiError(429, "Too Many Requests: retry after 1", retry_after=1)
            result = self._methods[method](params)
            if inspect.isawaitable(result):
                result = await result
            status, body = 200, {"ok": True, "result": result}
        except _ApiError as error:
            status, body = error.status, error.body()
        except Exception as exc:  # a bug in the fake: visible in `calls`, and to the bot
            status, body = 500, _ApiError(500, f"Internal Server Error: fake: {exc!r}").body()
        call.status = status
        self._changed()
        return web.json_response(body, status=status)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.json_response(_ApiError(401, "Unauthorized").body(), status=401)
        file = self._paths.get(request.match_info["path"])
        if file is None:
            return web.json_response(_ApiError(404, "Not Found").body(), status=404)
        self.downloads.append(file.path)
        self._changed()
        return web.Response(body=file.data, content_type="application/octet-stream")

    # -- chats, as methods see them ------------------------------------------------------------

    def _chat_id(self, params: JSON) -> int:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad("chat_id is empty")
        if not isinstance(chat_id, int) or chat_id not in self._chats:
            raise _bad("chat not found")
        return chat_id

    def _writable(self, params: JSON) -> int:
        """The chat the bot writes to, if it may."""
        chat_id = self._chat_id(params)
        if chat_id > 0:
            if chat_id in self._blocked:
                raise _ApiError(403, "Forbidden: bot was blocked by the user")
            if chat_id not in self.started:
                raise _ApiError(403, "Forbidden: bot can't initiate conversation with a user")
        elif (status := self._status(chat_id, self.bot_id)) == "kicked":
            raise _ApiError(403, "Forbidden: bot was kicked from the supergroup chat")
        elif status == "left":
            raise _ApiError(403, "Forbidden: bot is not a member of the supergroup chat")
        return chat_id

    def _reply_to(self, chat_id: int, params: JSON) -> JSON | None:
        reply = params.get("reply_parameters")
        if isinstance(reply, dict):
            message_id = reply.get("message_id")
            allow = reply.get("allow_sending_without_reply", False)
        elif params.get("reply_to_message_id") is not None:
            message_id = params["reply_to_message_id"]
            allow = params.get("allow_sending_without_reply", False)
        else:
            return None
        found = self._messages.get(chat_id, {}).get(message_id)
        if found is None and not allow:
            raise _bad("message to be replied not found")
        return found

    def _file_ref(self, value: Any, kind: str) -> _File:
        if isinstance(value, str) and value in self._files:
            return self._files[value]
        if value is None or value == "":
            raise _bad(f"there is no {kind} in the request")
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            raise _bad("failed to get HTTP URL content")
        raise _bad("wrong file identifier/HTTP URL specified")

    def _photo_input(self, value: Any) -> list[JSON]:
        if not isinstance(value, bytes):
            file = self._file_ref(value, "photo")
            try:
                return self._photo_sizes(file.data, original=file)
            except Exception:
                raise _bad("can't use file of type Document as Photo") from None
        if not value:
            raise _bad("file must be non-empty")
        if len(value) > MAX_PHOTO:
            raise _bad("PHOTO_INVALID_DIMENSIONS")
        try:
            with Image.open(io.BytesIO(value)) as image:
                image.load()
                width, height = image.size
        except Exception:
            raise _bad("IMAGE_PROCESS_FAILED") from None
        if width + height > 10_000 or max(width, height) > 20 * min(width, height):
            raise _bad("PHOTO_INVALID_DIMENSIONS")
        return self._photo_sizes(value)

    def _document_input(self, value: Any) -> JSON:
        if not isinstance(value, bytes):
            return _document(self._file_ref(value, "document"))
        if not value:
            raise _bad("file must be non-empty")
        if len(value) > MAX_UPLOAD:
            raise _ApiError(413, "Request Entity Too Large")
        name = getattr(value, "filename", None) or "document"
        sent_type = getattr(value, "content_type", None)
        if not sent_type or sent_type == "application/octet-stream":
            sent_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        file = self._register(value, f"documents/file{PurePosixPath(name).suffix}")
        file.name, file.mime = name, sent_type
        return _document(file)

    # -- methods -------------------------------------------------------------------------------

    def _get_me(self, params: JSON) -> JSON:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": not self.privacy_mode,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _deliverable(self) -> list[JSON]:
        """Pending updates the bot asked for; the others are dropped, as Telegram never makes
        them."""
        allowed = self._allowed_updates

        def wanted(update: JSON) -> bool:
            kind = next((key for key in update if key != "update_id"), "")
            return kind in allowed if allowed else kind not in _DEFAULT_EXCLUDED_UPDATES

        self._updates = [update for update in self._updates if wanted(update)]
        return self._updates

    async def _get_updates(self, params: JSON) -> list[JSON]:
        if self.webhook is not None:
            raise _ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use "
                "deleteWebhook to delete the webhook first",
            )
        offset = params.get("offset")
        if isinstance(offset, int) and offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif isinstance(offset, int) and offset < 0:
            self._updates = self._updates[offset:]
        if params.get("allowed_updates") is not None:
            self._allowed_updates = list(params["allowed_updates"]) or None
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        self._poller += 1
        me = self._poller
        self._changed()  # an older poll ends
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, float(params.get("timeout") or 0))
        while True:
            if me != self._poller:
                raise _ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one "
                    "bot instance is running",
                )
            if self.webhook is not None:
                raise _ApiError(409, "Conflict: terminated by setWebhook request")
            batch = self._deliverable()[:limit]
            remaining = deadline - loop.time()
            if batch or self._closing or remaining <= 0:
                return copy.deepcopy(batch)
            await self._next_change(remaining)

    def _set_webhook(self, params: JSON) -> bool:
        url = str(params.get("url") or "")
        secret = params.get("secret_token") or None
        if secret is not None and len(secret) > 256:
            raise _bad("secret token is too long")
        if secret is not None and not _SECRET.fullmatch(secret):
            raise _bad("secret token contains unallowed characters")
        if url and not url.startswith(("https://", "http://")):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        if params.get("drop_pending_updates"):
            self._updates.clear()
        allowed = params.get("allowed_updates")
        if allowed is not None:
            self._allowed_updates = list(allowed) or None
        if not url:  # setWebhook with an empty url removes the webhook
            self.webhook = None
            return True
        self.webhook = {"url": url, "secret_token": secret, "allowed_updates": allowed}
        self._webhook_error = None
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._deliver_to_webhook())
        return True

    def _delete_webhook(self, params: JSON) -> bool:
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook = None
        return True

    def _get_webhook_info(self, params: JSON) -> JSON:
        info: JSON = {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._deliverable()),
        }
        if self.webhook is not None:
            info["max_connections"] = 40
            if self.webhook["allowed_updates"]:
                info["allowed_updates"] = self.webhook["allowed_updates"]
        if self._webhook_error is not None:
            info["last_error_date"], info["last_error_message"] = self._webhook_error
        return info

    async def _deliver_to_webhook(self) -> None:
        """POST queued updates to the webhook one at a time, in order; or, with more than one
        of `webhook_connections`, up to that many at once, one chat's in order."""
        if self.webhook_connections > 1:
            await self._deliver_concurrently()
            return
        while not self._closing and self.webhook is not None:
            pending = self._deliverable()
            if not pending:
                await self._next_change(None)
                continue
            await self._deliver_one(pending[0])

    async def _deliver_one(self, update: JSON) -> None:
        message = update.get("message")
        if isinstance(message, dict):
            key = (message["chat"]["id"], message["message_id"])
            self.first_posts.setdefault(key, time.monotonic())
        for attempt in range(self.webhook_attempts):
            if attempt:
                await asyncio.sleep(self.webhook_retry_delay)
            if self.webhook is None:
                return
            status, error = await self._post(self.webhook, update)
            self.webhook_deliveries.append((update["update_id"], status))
            if 200 <= status < 300:
                break
            self._webhook_error = (int(time.time()), error)
        with contextlib.suppress(ValueError):
            self._updates.remove(update)
        self._changed()

    async def _deliver_concurrently(self) -> None:
        sending: dict[int, asyncio.Task[None]] = {}  # update_id -> its delivery
        busy: set[object] = set()  # chats with an update on its way
        try:
            while not self._closing and self.webhook is not None:
                ready = [
                    update
                    for update in self._deliverable()
                    if update["update_id"] not in sending and _chat_key(update) not in busy
                ]
                if not ready or len(sending) >= self.webhook_connections:
                    await self._next_change(None)
                    continue
                update = ready[0]
                chat = _chat_key(update)
                busy.add(chat)
                task = asyncio.get_running_loop().create_task(self._deliver_one(update))
                sending[update["update_id"]] = task
                task.add_done_callback(
                    lambda _t, u=update["update_id"], c=chat: (
                        sending.pop(u, None),
                        busy.discard(c),
                        self._changed(),
                    )
                )
        finally:
            for task in sending.values():
                task.cancel()

    async def _post(self, hook: JSON, update: JSON) -> tuple[int, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        headers = {"Content-Type": "application/json"}
        if hook["secret_token"] is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = hook["secret_token"]
        try:
            async with self._session.post(
                hook["url"], data=json.dumps(update), headers=headers
            ) as response:
                await response.read()
                error = f"Wrong response from the webhook: {response.status} {response.reason}"
                return response.status, error
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, f"Connection failed: {exc}"

    async def post_webhook(self, update: JSON, *, secret: str | None) -> int:
        """POST an update straight to the webhook with this secret header (none for None);
        returns the status the bot answered (0 if it did not). The queue is left alone."""
        if self.webhook is None:
            raise AssertionError("no webhook is set")
        update = {"update_id": self._next_update_id, **update}
        self._next_update_id = max(self._next_update_id, update["update_id"]) + 1
        status, _ = await self._post({**self.webhook, "secret_token": secret}, update)
        return status

    def _get_file(self, params: JSON) -> JSON:
        file = self._files.get(str(params.get("file_id") or ""))
        if file is None:
            raise _bad("invalid file_id")
        if file.size > MAX_DOWNLOAD:
            raise _bad("file is too big")
        return file.info()

    def _send_message(self, params: JSON) -> JSON:
        content, markup = _text(params), _markup(params)
        chat_id = self._writable(params)
        reply = self._reply_to(chat_id, params)
        return self._store(chat_id, self.bot_user, content, reply=reply, markup=markup)

    def _send_photo(self, params: JSON) -> JSON:
        return self._send_file(params, "photo")

    def _send_document(self, params: JSON) -> JSON:
        return self._send_file(params, "document")

    def _send_file(self, params: JSON, kind: str) -> JSON:
        caption, markup = _caption(params), _markup(params)
        chat_id = self._writable(params)
        reply = self._reply_to(chat_id, params)
        if kind == "photo":
            content = {"photo": self._photo_input(params.get("photo")), **caption}
        else:
            content = {"document": self._document_input(params.get("document")), **caption}
        return self._store(chat_id, self.bot_user, content, reply=reply, markup=markup)

    def _send_media_group(self, params: JSON) -> list[JSON]:
        media = params.get("media")
        if media is None:
            raise _bad('parameter "media" is required')
        if not isinstance(media, list) or not all(isinstance(item, dict) for item in media):
            raise _bad("can't parse media JSON object")
        if not media:
            raise _bad("there are no messages to send")
        if len(media) > 10:
            raise _bad("too many messages to send as an album")
        kinds = [item.get("type") for item in media]
        for kind in kinds:
            if kind not in ("photo", "document"):
                raise _bad(f'the fake models no InputMedia of type "{kind}"')
        if "photo" in kinds and "document" in kinds:
            raise _bad("document can't be mixed with other media types")
        chat_id = self._writable(params)
        reply = self._reply_to(chat_id, params)
        contents = []
        for item in media:
            value = item.get("media")
            if isinstance(value, str) and value.startswith("attach://"):
                raise _bad("can't parse InputMedia: media not found")
            caption = _caption(item)
            if item["type"] == "photo":
                contents.append({"photo": self._photo_input(value), **caption})
            else:
                contents.append({"document": self._document_input(value), **caption})
        if len(contents) > 1:
            group = str(10**17 + secrets.randbelow(9 * 10**17))
            contents = [{**content, "media_group_id": group} for content in contents]
        return [self._store(chat_id, self.bot_user, c, reply=reply) for c in contents]

    def _editable(self, params: JSON) -> JSON:
        chat_id = self._chat_id(params)
        message = self._messages.get(chat_id, {}).get(params.get("message_id"))
        if message is None:
            raise _bad("message to edit not found")
        if message["from"]["id"] != self.bot_id:
            raise _bad("message can't be edited")
        return message

    def _edit(self, message: JSON, content: JSON, markup: JSON | None) -> JSON:
        new = {key: value or None for key, value in content.items()}
        if new == {key: message.get(key) for key in new} and markup == message.get("reply_markup"):
            raise _bad(_NOT_MODIFIED)
        for key, value in [*new.items(), ("reply_markup", markup)]:
            if value is None:
                message.pop(key, None)
            else:
                message[key] = copy.deepcopy(value)
        message["edit_date"] = int(time.time())
        self._changed()
        return copy.deepcopy(message)

    def _edit_message_text(self, params: JSON) -> JSON:
        content, markup = _text(params), _markup(params)
        message = self._editable(params)
        if "text" not in message:
            raise _bad("there is no text in the message to edit")
        return self._edit(message, {"text": None, "entities": None} | content, markup)

    def _edit_message_caption(self, params: JSON) -> JSON:
        caption, markup = _caption(params), _markup(params)
        message = self._editable(params)
        if "text" in message:
            raise _bad("there is no caption in the message to edit")
        return self._edit(message, {"caption": None, "caption_entities": None} | caption, markup)

    def _edit_message_reply_markup(self, params: JSON) -> JSON:
        markup = _markup(params)
        return self._edit(self._editable(params), {}, markup)

    def _edit_message_media(self, params: JSON) -> JSON:
        media, markup = params.get("media"), _markup(params)
        if not isinstance(media, dict) or media.get("type") not in ("photo", "document"):
            raise _bad("can't parse InputMedia JSON object")
        value = media.get("media")
        if isinstance(value, str) and value.startswith("attach://"):
            raise _bad("can't parse InputMedia: media not found")
        self._member_check(self._chat_id(params))
        message = self._editable(params)
        if "photo" not in message and "document" not in message:
            raise _bad("there is no media in the message to edit")
        if message.get("media_group_id"):
            kind = "document" if "document" in message else "photo"
            if media["type"] != kind:
                raise _bad("can't use the media of the specified type in the album")
        if media["type"] == "photo":
            content = {"photo": self._photo_input(value), "document": None}
        else:
            content = {"document": self._document_input(value), "photo": None}
        caption = {"caption": None, "caption_entities": None} | _caption(media)
        return self._edit(message, content | caption, markup)

    def _member_check(self, chat_id: int) -> None:
        """403 in a group the bot was removed from, whatever it asks there."""
        if chat_id > 0:
            return
        if (status := self._status(chat_id, self.bot_id)) == "kicked":
            raise _ApiError(403, "Forbidden: bot was kicked from the supergroup chat")
        if status == "left":
            raise _ApiError(403, "Forbidden: bot is not a member of the supergroup chat")

    def _delete_message(self, params: JSON) -> bool:
        chat_id = self._chat_id(params)
        self._member_check(chat_id)
        messages = self._messages.get(chat_id, {})
        message_id = params.get("message_id")
        message = messages.get(message_id)
        if message is None:
            raise _bad("message to delete not found")
        mine = message["from"]["id"] == self.bot_id
        if not mine and chat_id < 0 and self._status(chat_id, self.bot_id) not in _ADMINS:
            raise _bad("message can't be deleted")
        if time.time() - message["date"] >= DELETE_WINDOW:
            raise _bad("message can't be deleted")
        del messages[message_id]
        self.deleted.append((chat_id, message["message_id"]))
        return True

    def _send_chat_action(self, params: JSON) -> bool:
        if params.get("action") not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        self._writable(params)
        return True

    def _answer_callback_query(self, params: JSON) -> bool:
        query_id = str(params.get("callback_query_id") or "")
        if len(str(params.get("text") or "")) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        if self._callbacks.get(query_id) is not False:
            raise _bad(_OLD_QUERY)
        self._callbacks[query_id] = True
        self.answers[query_id] = dict(params)
        return True

    def _scope_key(self, params: JSON) -> str:
        """The key of `commands`: "default", "chat:<id>", ... and "|<language>" if given."""
        scope = params.get("scope") or {"type": "default"}
        kind = scope.get("type") if isinstance(scope, dict) else None
        if kind in ("default", "all_private_chats", "all_group_chats", "all_chat_administrators"):
            key = str(kind)
        elif kind in ("chat", "chat_administrators", "chat_member"):
            key = f"{kind}:{self._chat_id({'chat_id': _decode('chat_id', scope.get('chat_id'))})}"
            if kind == "chat_member":
                user_id = _decode("user_id", scope.get("user_id"))
                if not isinstance(user_id, int) or user_id not in self._users:
                    raise _bad("user not found")
                key += f":{user_id}"
        else:
            raise _bad("can't parse BotCommandScope JSON object")
        language = params.get("language_code")
        return f"{key}|{language}" if language else key

    def _set_my_commands(self, params: JSON) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise _bad("can't parse commands JSON object")
        if len(commands) > 100:
            raise _bad("BOT_COMMANDS_TOO_MUCH")
        for command in commands:
            if not isinstance(command, dict) or not _COMMAND_NAME.fullmatch(
                str(command.get("command"))
            ):
                raise _bad("BOT_COMMAND_INVALID")
            description = command.get("description")
            if not isinstance(description, str) or not 1 <= len(description) <= 256:
                raise _bad("BOT_COMMAND_DESCRIPTION_INVALID")
        key = self._scope_key(params)
        if commands:
            self.commands[key] = [
                {"command": c["command"], "description": c["description"]} for c in commands
            ]
        else:
            self.commands.pop(key, None)
        return True

    def _get_my_commands(self, params: JSON) -> list[JSON]:
        return copy.deepcopy(self.commands.get(self._scope_key(params), []))

    def _delete_my_commands(self, params: JSON) -> bool:
        self.commands.pop(self._scope_key(params), None)
        return True

    def _member(self, chat_id: int, user_id: int) -> JSON:
        """ChatMember JSON with every field PTB requires for its status."""
        user = self._users.get(user_id) or {"id": user_id, "is_bot": False, "first_name": "User"}
        if user_id == self.bot_id:
            user = self.bot_user
        status = self._status(chat_id, user_id)
        member: JSON = {"status": status, "user": user}
        if status == "creator":
            member["is_anonymous"] = (chat_id, user_id) in self._anonymous
        elif status == "administrator":
            member |= {"is_anonymous": (chat_id, user_id) in self._anonymous, **_ADMIN_RIGHTS}
        elif status == "kicked":
            member["until_date"] = 0
        return copy.deepcopy(member)

    def _get_chat_member(self, params: JSON) -> JSON:
        chat_id = self._chat_id(params)
        user_id = params.get("user_id")
        if not isinstance(user_id, int):
            raise _bad("invalid user_id specified")
        return self._member(chat_id, user_id)

    def _get_chat_administrators(self, params: JSON) -> list[JSON]:
        chat_id = self._chat_id(params)
        if chat_id > 0:
            raise _bad("there are no administrators in the private chat")
        admins = [
            user
            for (chat, user), status in self._members.items()
            if chat == chat_id and status in _ADMINS
        ]
        admins.sort(key=lambda user: self._status(chat_id, user) != "creator")
        return [self._member(chat_id, user) for user in admins]

    def _close(self, params: JSON) -> bool:
        return True

    def _log_out(self, params: JSON) -> bool:
        return True

    def _get_chat(self, params: JSON) -> JSON:
        chat = copy.deepcopy(self._chats[self._chat_id(params)])
        return chat | {
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": dict(_ACCEPTED_GIFTS),
        }
