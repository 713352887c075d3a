"""Pseudonyms: what storage keeps in place of a platform id that must outlive its user row.

A ban, and the allowance a forgotten user already spent today, have to find the same person
again when they come back, without the table holding their platform id in clear. A plain hash
would not do: a Telegram id is about ten digits, so anyone holding the table could hash every
id there is. A keyed hash (HMAC-SHA256) under a secret only the server holds cannot be
reversed that way.

The key lives in a file beside the data (`load_or_create_key`): 64 hexadecimal digits (32
bytes) and a newline, readable by its owner only. Losing or changing it makes every stored
pseudonym stale: bans no longer match and forgotten usage no longer carries over.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from sqlalchemy import select

from storage.database import Database
from storage.dml import insert_ignoring_duplicates
from storage.models import InstanceFact, utcnow

_FACTS = InstanceFact.__table__

KEY_BYTES = 32


class Pseudonyms:
    """Turns a platform id into the subject that bans and forgotten usage are keyed by."""

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"a pseudonym key is at least {KEY_BYTES} bytes")
        self._key = bytes(key)

    def subject(self, platform: str, platform_user_id: str) -> str:
        """HMAC-SHA256 of "platform:id" under the key, as 64 hexadecimal digits."""
        message = f"{platform}:{platform_user_id}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def derived_key(self, purpose: str) -> bytes:
        """A key of its own for `purpose` (sealing tokens, say), derived from this one: every
        process sharing the pseudonym key derives the same, and none reveals the others."""
        # The NUL bytes keep this message apart from every subject's ("platform:id").
        message = b"\0" + DERIVED_KEY_TEXT + b"\0" + purpose.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def check_value(self) -> str:
        """What the database keeps to tell whether a process has the key its pseudonyms were
        made with: an HMAC of a fixed text, from which the key cannot be recovered."""
        return hmac.new(self._key, CHECK_TEXT, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "Pseudonyms(key=<hidden>)"


class KeyMismatch(Exception):
    """This process's pseudonym key is not the one the database's pseudonyms were made with."""


CHECK_TEXT = b"headshot-bot pseudonym key check"
DERIVED_KEY_TEXT = b"headshot-bot derived key"
CHECK_FACT = "pseudonym_key_check"


async def verify_key(db: Database, pseudonyms: Pseudonyms) -> None:
    """Have the database remember the key's check value (the first process to start writes it)
    and raise KeyMismatch if this process's key is another: its bans would silently stop
    matching, and forgotten users' spent allowance would not carry over."""
    mine = pseudonyms.check_value()
    async with db.write() as conn:
        await conn.execute(
            insert_ignoring_duplicates(conn, _FACTS).values(
                name=CHECK_FACT, value=mine, created_at=utcnow()
            )
        )
        stored = (
            await conn.execute(select(_FACTS.c.value).where(_FACTS.c.name == CHECK_FACT))
        ).scalar_one()
    if not hmac.compare_digest(stored, mine):
        raise KeyMismatch("it is not the key this database's bans were made with")


def key_from_text(text: str) -> bytes:
    """A key given as hexadecimal text (a setting or a secret file); ValueError, never quoting
    the text, if it is not one."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(f"must be at least {KEY_BYTES * 2} hexadecimal digits") from None
    if len(key) < KEY_BYTES:
        raise ValueError(f"must be at least {KEY_BYTES * 2} hexadecimal digits")
    return key


def load_or_create_key(path: Path) -> bytes:
    """The key in `path`, or a new random one written there first.

    The file holds the key as hexadecimal text (surrounding whitespace ignored), at least 64
    digits. A new file is created with mode 0o600 and fully written and synced under a temporary
    name before it is linked into place, so another process starting at the same moment either
    finds no key (and links its own, of which exactly one wins) or a complete one.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    data = (key.hex() + "\n").encode()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    _write_new(temporary, data)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return _read_key(path)  # another process was first: use its key
    except OSError:
        # No hard links on this file system: create the file in place instead.
        try:
            _write_new(path, data)
        except FileExistsError:
            return _read_key(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    _sync_directory(path.parent)
    return key


def _read_key(path: Path) -> bytes:
    text = path.read_bytes().strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        # Never quote the content: it is a secret, even when it is a broken one.
        raise ValueError(f"{path} does not hold a hexadecimal key") from None
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path} holds a key shorter than {KEY_BYTES} bytes")
    return key


def read_key_file(path: Path) -> bytes:
    """The key in an existing file (PSEUDONYM_KEY_FILE: a mounted secret); never created."""
    return _read_key(path)


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` (never an existing one) owner-only, write `data` and sync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(directory: Path) -> None:
    """Make the new directory entry durable (where the platform allows opening a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
