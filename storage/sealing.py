"""Sealing: how a short-lived secret (a chat platform's interaction token) is kept in a row.

AES-256-GCM under a key of its own (`Pseudonyms.derived_key`), so that every process sharing the
pseudonym key can open what another sealed, and the database alone opens nothing. Each seal has
a fresh random nonce and is bound to the row it belongs to (its key, as associated data): moved
to another row, it no longer opens.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a sealing key is {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def seal(self, secret: str, *, row: str) -> str:
        """`secret` encrypted for the row keyed `row`, as URL-safe base64 text."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), row.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, *, row: str) -> str:
        """The secret `seal` sealed for this row; ValueError (never quoting anything) if it is
        not one: made under another key, for another row, or altered."""
        try:
            data = base64.urlsafe_b64decode(sealed.encode("ascii"))
            nonce, body = data[:NONCE_BYTES], data[NONCE_BYTES:]
            return self._aead.decrypt(nonce, body, row.encode()).decode()
        except (binascii.Error, InvalidTag, UnicodeError, ValueError):
            raise ValueError("a sealed value that does not open under this key") from None

    def __repr__(self) -> str:
        return "Sealer(key=<hidden>)"
