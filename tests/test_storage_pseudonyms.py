"""Pseudonyms under a server key, and the key file that holds it."""

from __future__ import annotations

import hashlib
import hmac
import stat
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.database import Database
from storage.models import InstanceFact
from storage.pseudonyms import KeyMismatch, Pseudonyms, load_or_create_key, verify_key

KEY = bytes(range(32))


def test_subject_is_a_keyed_hash_of_the_platform_id() -> None:
    pseudonyms = Pseudonyms(KEY)
    subject = pseudonyms.subject("discord", "1234")
    assert len(subject) == 64 and "1234" not in subject
    assert subject == hmac.new(KEY, b"discord:1234", hashlib.sha256).hexdigest()
    assert (
        subject == pseudonyms.subject("discord", "1234") != pseudonyms.subject("telegram", "1234")
    )
    # Not the unkeyed hash anyone could compute for every id, and another key, another name.
    assert subject != hashlib.sha256(b"discord:1234").hexdigest()
    assert subject != Pseudonyms(bytes(32)).subject("discord", "1234")
    assert KEY.hex() not in repr(pseudonyms)


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Pseudonyms(b"x" * 31)
    Pseudonyms(b"x" * 64)  # longer is fine


def test_key_file_is_created_private_once_and_then_read(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "deeper" / "pseudonym.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == key.hex() + "\n"
    assert load_or_create_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["pseudonym.key"]  # no temporary left
    assert load_or_create_key(tmp_path / "other.key") != key


def test_an_existing_key_file_is_used_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_text("  " + ("ab" * 40).upper() + "\n\n")
    assert load_or_create_key(path) == bytes.fromhex("ab" * 40)


@pytest.mark.parametrize("content", [b"", b"ab" * 31, b"not hex at all, but long enough" * 3])
def test_a_broken_key_file_is_refused_without_quoting_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"pseudonym\.key") as refused:
        load_or_create_key(path)
    if content:
        assert content.decode() not in str(refused.value)
    assert path.read_bytes() == content  # never overwritten


def test_racing_creators_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    keys: list[bytes] = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        keys.append(load_or_create_key(path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert load_or_create_key(path) == keys[0]
    assert [p.name for p in tmp_path.iterdir()] == ["pseudonym.key"]


async def test_the_database_remembers_the_first_keys_check_value(db: Database) -> None:
    first = Pseudonyms(bytes(range(32)))
    await verify_key(db, first)
    await verify_key(db, Pseudonyms(bytes(range(32))))  # the same key: fine, again and again
    with pytest.raises(KeyMismatch):
        await verify_key(db, Pseudonyms(bytes(range(1, 33))))
    async with db.read() as conn:
        rows = (await conn.execute(select(InstanceFact.name, InstanceFact.value))).all()
    assert [(name, value) for name, value in rows] == [("pseudonym_key_check", first.check_value())]
    assert bytes(range(32)).hex() not in rows[0][1]
