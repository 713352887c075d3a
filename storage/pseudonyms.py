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

    def __repr__(self) -> str:
        return "Pseudonyms(key=<hidden>)"


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
