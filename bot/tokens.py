"""Unguessable tokens (webhook paths, image paths). Only hashes of webhook tokens are stored."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_BYTES = 24  # 192 bits


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_job_id() -> str:
    return secrets.token_hex(16)
