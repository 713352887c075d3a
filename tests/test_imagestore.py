"""storage.imagestore: one behaviour contract, run against the disk store and a real S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from storage.imagestore import (
    DiskImageStore,
    ImageNotFound,
    ImageStore,
    ImageStoreConfigError,
    InvalidImageKey,
    S3ImageStore,
    content_type_for_key,
    open_image_store,
    validate_key,
)

ACCESS_KEY = "AKIAEXAMPLEEXAMPLE"
SECRET_KEY = "s3cr3t-do-not-leak-0123456789"
REGION = "us-east-1"
JPEG = b"\xff\xd8\xff\xe0fake-jpeg-bytes\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\nfake-png-bytes"

TRAVERSAL_KEYS = [
    "",
    "/etc/passwd",
    "../outside.jpg",
    "a/../../outside.jpg",
    "a/./b.jpg",
    "a//b.jpg",
    "a/",
    ".hidden.jpg",
    "a\\b.jpg",
    "a b.jpg",
    "caf\u00e9.jpg",
    "a/b.jpg\x00",
    "x" * 600,
]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_admin(s3_endpoint: str) -> Any:
    """A plain boto3 client, to set up buckets and look behind the store's back."""
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


async def make_bucket(s3_admin: Any) -> str:
    bucket = f"images-{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(s3_admin.create_bucket, Bucket=bucket)
    return bucket


def s3_store(endpoint: str, bucket: str, prefix: str = "") -> S3ImageStore:
    return S3ImageStore(
        bucket,
        endpoint_url=endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        prefix=prefix,
    )


@pytest.fixture(params=["disk", "s3", "s3-prefixed"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ImageStore]:
    if request.param == "disk":
        image_store: ImageStore = DiskImageStore(tmp_path / "images")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = await make_bucket(request.getfixturevalue("s3_admin"))
        prefix = "tenant/images" if request.param == "s3-prefixed" else ""
        image_store = s3_store(endpoint, bucket, prefix)
    try:
        yield image_store
    finally:
        await image_store.aclose()


# --- the contract, for every store -----------------------------------------------------


async def test_put_without_key_is_content_addressed(store: ImageStore) -> None:
    key = await store.put(JPEG, content_type="image/jpeg")
    assert key == f"{hashlib.sha256(JPEG).hexdigest()}.jpg"
    assert await store.get(key) == JPEG
    assert await store.exists(key)


async def test_same_bytes_twice_is_a_no_op(store: ImageStore) -> None:
    first = await store.put(PNG, content_type="image/png")
    second = await store.put(PNG, content_type="image/png")
    assert first == second
    assert first.endswith(".png")
    assert await store.keys() == [first]


async def test_explicit_keys_are_kept_and_overwritten(store: ImageStore) -> None:
    key = await store.put(JPEG, content_type="image/jpeg", key="jobs/42/out-0.jpg")
    assert key == "jobs/42/out-0.jpg"
    assert await store.get(key) == JPEG
    await store.put(b"replacement", content_type="image/jpeg", key=key)
    assert await store.get(key) == b"replacement"


async def test_missing_key_is_image_not_found(store: ImageStore) -> None:
    with pytest.raises(ImageNotFound):
        await store.get("nope.jpg")
    with pytest.raises(KeyError):  # ImageNotFound is a KeyError
        await store.get("dir/nope.jpg")
    assert not await store.exists("nope.jpg")


async def test_delete_is_idempotent(store: ImageStore) -> None:
    key = await store.put(JPEG, content_type="image/jpeg")
    await store.delete(key)
    assert not await store.exists(key)
    with pytest.raises(ImageNotFound):
        await store.get(key)
    await store.delete(key)
    await store.delete("never-existed.jpg")


async def test_keys_lists_everything_stored(store: ImageStore) -> None:
    assert await store.keys() == []
    content_key = await store.put(JPEG, content_type="image/jpeg")
    await store.put(PNG, content_type="image/png", key="selfies/u1/a.png")
    await store.put(PNG, content_type="image/png", key="selfies/u2/b.png")
    assert await store.keys() == sorted([content_key, "selfies/u1/a.png", "selfies/u2/b.png"])
    await store.delete("selfies/u1/a.png")
    assert await store.keys() == sorted([content_key, "selfies/u2/b.png"])


async def test_keys_by_prefix_and_by_when_they_were_written(store: ImageStore) -> None:
    """A sweep lists what was written before a moment: a key being written now is spared."""
    await store.put(PNG, content_type="image/png", key="inputs/old.png")
    await store.put(PNG, content_type="image/png", key="outputs/old.png")
    # S3 keeps LastModified to the whole second: the moment between is one too, more than a
    # second after the first writes and before the last.
    await asyncio.sleep(1.1)
    between = datetime.now(UTC).replace(microsecond=0)
    await store.put(PNG, content_type="image/png", key="inputs/new.png")
    assert await store.keys(prefix="inputs/") == ["inputs/new.png", "inputs/old.png"]
    assert await store.keys(prefix="inputs/", written_before=between) == ["inputs/old.png"]
    assert await store.keys(written_before=between) == ["inputs/old.png", "outputs/old.png"]
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert await store.keys(prefix="inputs/", written_before=later) == [
        "inputs/new.png",
        "inputs/old.png",
    ]


async def test_directory_prefix_is_not_an_image(store: ImageStore) -> None:
    await store.put(PNG, content_type="image/png", key="selfies/u1/a.png")
    assert not await store.exists("selfies/u1")
    with pytest.raises(ImageNotFound):
        await store.get("selfies/u1")
    await store.delete("selfies/u1")
    assert await store.exists("selfies/u1/a.png")


async def test_unsafe_keys_are_refused(store: ImageStore) -> None:
    for key in TRAVERSAL_KEYS:
        with pytest.raises(InvalidImageKey):
            await store.put(JPEG, content_type="image/jpeg", key=key)
        with pytest.raises(InvalidImageKey):
            await store.get(key)
        with pytest.raises(InvalidImageKey):
            await store.exists(key)
        with pytest.raises(InvalidImageKey):
            await store.delete(key)
    assert await store.keys() == []


async def test_unknown_content_type_is_refused(store: ImageStore) -> None:
    with pytest.raises(ValueError, match="unsupported image content type"):
        await store.put(b"GIF89a", content_type="image/gif")
    with pytest.raises(ValueError, match="unsupported image content type"):
        await store.put(b"<svg/>", content_type="image/svg+xml", key="a.svg")
    assert await store.keys() == []


async def test_concurrent_puts_of_the_same_bytes(store: ImageStore) -> None:
    keys = await asyncio.gather(*(store.put(JPEG, content_type="image/jpeg") for _ in range(8)))
    assert len(set(keys)) == 1
    assert await store.keys() == [keys[0]]
    assert await store.get(keys[0]) == JPEG


# --- disk specifics --------------------------------------------------------------------


async def test_disk_store_writes_atomically_and_stays_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "images"
    store = DiskImageStore(root)
    key = await store.put(JPEG, content_type="image/jpeg", key="a/b/c.jpg")
    assert await asyncio.to_thread(files_under, tmp_path) == {"images/a/b/c.jpg": JPEG}
    # A temporary file left by a crash mid-write is not an image.
    await asyncio.to_thread((root / "a" / ".tmp-crashed").write_bytes, b"partial")
    assert await store.keys() == [key]


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def test_disk_store_on_a_missing_root(tmp_path: Path) -> None:
    store = DiskImageStore(tmp_path / "not-yet")
    assert await store.keys() == []
    assert not await store.exists("a.jpg")
    await store.delete("a.jpg")


# --- S3 specifics ----------------------------------------------------------------------


async def test_s3_prefix_is_applied_to_objects(s3_endpoint: str, s3_admin: Any) -> None:
    bucket = await make_bucket(s3_admin)
    # Objects outside the prefix belong to someone else: never listed, never touched.
    await asyncio.to_thread(s3_admin.put_object, Bucket=bucket, Key="other/z.jpg", Body=b"z")
    store = s3_store(s3_endpoint, bucket, prefix="/tenant/")
    try:
        key = await store.put(JPEG, content_type="image/jpeg", key="x/y.jpg")
        assert await store.keys() == ["x/y.jpg"]
        assert not await store.exists("other/z.jpg")
    finally:
        await store.aclose()
    listed = await asyncio.to_thread(s3_admin.list_objects_v2, Bucket=bucket)
    assert sorted(item["Key"] for item in listed["Contents"]) == ["other/z.jpg", "tenant/x/y.jpg"]
    head = await asyncio.to_thread(s3_admin.head_object, Bucket=bucket, Key="tenant/" + key)
    assert head["ContentType"] == "image/jpeg"


async def test_s3_store_can_be_used_again_after_aclose(s3_endpoint: str, s3_admin: Any) -> None:
    bucket = await make_bucket(s3_admin)
    store = s3_store(s3_endpoint, bucket)
    key = await store.put(JPEG, content_type="image/jpeg")
    await store.aclose()
    assert await store.get(key) == JPEG
    await store.aclose()


def test_s3_repr_hides_credentials(s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint, "bucket")
    text = repr(store) + str(store) + repr(vars(store))
    assert "bucket" in text
    assert SECRET_KEY not in text
    assert ACCESS_KEY not in text


def test_s3_without_aioboto3_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aioboto3", None)
    with pytest.raises(ImageStoreConfigError) as caught:
        open_image_store(data_dir=Path("/unused"), s3_bucket="photos")
    assert str(caught.value) == (
        "S3_BUCKET is set but aioboto3 is not installed: pip install 'headshot-bot[s3]'"
    )


# --- choosing a store, keys, content types ---------------------------------------------


def test_open_image_store_chooses_by_bucket(tmp_path: Path) -> None:
    disk = open_image_store(data_dir=tmp_path, s3_bucket=None)
    assert isinstance(disk, DiskImageStore)
    assert disk.root == tmp_path
    assert isinstance(open_image_store(data_dir=tmp_path, s3_bucket=""), DiskImageStore)
    s3 = open_image_store(
        data_dir=tmp_path,
        s3_bucket="photos",
        s3_endpoint_url="http://127.0.0.1:9000",
        s3_region=REGION,
        s3_access_key_id=ACCESS_KEY,
        s3_secret_access_key=SECRET_KEY,
        s3_prefix="bot",
    )
    assert isinstance(s3, S3ImageStore)
    assert (s3.bucket, s3.prefix) == ("photos", "bot/")


def test_invalid_prefix_is_refused() -> None:
    with pytest.raises(InvalidImageKey):
        S3ImageStore("bucket", prefix="../other")


@pytest.mark.parametrize("key", ["a.jpg", "jobs/1/out-0.webp", "A_b-c.d/e.png", "x" * 512])
def test_safe_keys_pass(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "content_type"),
    [
        ("a.jpg", "image/jpeg"),
        ("a/b.JPEG", "image/jpeg"),
        ("a.png", "image/png"),
        ("a.webp", "image/webp"),
        ("a.bin", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ],
)
def test_content_type_for_key(key: str, content_type: str) -> None:
    assert content_type_for_key(key) == content_type
