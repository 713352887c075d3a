"""Where images live: a folder on disk, or an S3-compatible bucket.

Keys are relative, slash-separated names made only of `[A-Za-z0-9._/-]`; no segment
may be empty or start with a dot, so no key can climb out of the store (`..`) or
collide with the disk store's hidden temporary files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "DiskImageStore",
    "FolderWriter",
    "ImageNotFound",
    "ImageStore",
    "ImageStoreConfigError",
    "InvalidImageKey",
    "S3ImageStore",
    "content_type_for_key",
    "extension_for_content_type",
    "missing_s3_support",
    "open_image_store",
    "validate_key",
]

_MAX_KEY_LENGTH = 512
_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
_CONTENT_TYPES = {ext: content_type for content_type, ext in _EXTENSIONS.items()} | {
    "jpeg": "image/jpeg"
}


class ImageNotFound(KeyError):
    """No image is stored under this key."""


class InvalidImageKey(ValueError):
    """A key that could name something outside the store, or is malformed."""


class ImageStoreConfigError(RuntimeError):
    """The configured store cannot be used (for example, a missing optional package)."""


class ImageStore(Protocol):
    async def put(self, data: bytes, *, content_type: str, key: str | None = None) -> str:
        """Store `data` and return its key.

        With no key the image is content-addressed (`<sha256>.<ext>`), and storing the
        same bytes again is a no-op that returns the same key.
        """
        ...

    async def get(self, key: str) -> bytes:
        """The stored bytes; raises `ImageNotFound`."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the image; deleting a missing key is not an error."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def keys(self, *, prefix: str = "", written_before: datetime | None = None) -> list[str]:
        """Every stored key that starts with `prefix`, sorted; with `written_before`, only
        those last written before then (a sweep spares what is being written right now)."""
        ...

    async def aclose(self) -> None: ...

    async def sweep_unfinished(self, *, written_before: datetime) -> int:
        """Delete what writes begun before then left behind unfinished (a process killed in
        the middle of one: a selfie's copy, say); how many."""
        ...

    def local_writer(self) -> FolderWriter | None:
        """A writer of this store that another process on this machine can run itself (a
        decode worker storing the image it has just checked, the bytes never coming back),
        or None where the store is not a folder here."""
        ...


def validate_key(key: str) -> str:
    """Return `key` if it is safe to use, else raise `InvalidImageKey`."""
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY_LENGTH:
        raise InvalidImageKey(f"invalid image key: {key!r}")
    if not _KEY_CHARS.fullmatch(key):
        raise InvalidImageKey(f"invalid image key: {key!r}")
    if any(not segment or segment.startswith(".") for segment in key.split("/")):
        raise InvalidImageKey(f"invalid image key: {key!r}")
    return key


def extension_for_content_type(content_type: str) -> str:
    """The file extension for an image MIME type we store; ValueError for others."""
    try:
        return _EXTENSIONS[content_type.split(";")[0].strip().lower()]
    except KeyError:
        raise ValueError(f"unsupported image content type: {content_type!r}") from None


def content_type_for_key(key: str) -> str:
    """The MIME type to serve a key with, from its extension."""
    extension = key.rsplit(".", 1)[-1].lower() if "." in key else ""
    return _CONTENT_TYPES.get(extension, "application/octet-stream")


def _modified(path: Path) -> datetime:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:  # deleted as we looked: not one to sweep
        return datetime.max.replace(tzinfo=UTC)


# A write's temporary file, renamed to its key once whole (a hidden name: never a key).
_UNFINISHED = ".tmp-"


def _content_key(data: bytes, content_type: str) -> str:
    return f"{hashlib.sha256(data).hexdigest()}.{extension_for_content_type(content_type)}"


@dataclass(frozen=True)
class FolderWriter:
    """Writes images as files under `root`, synchronously and atomically (a temporary file,
    then a rename): what `DiskImageStore` runs in a thread, and what a process it is handed to
    (pickled: it is only the folder) runs itself."""

    root: Path

    def put(self, data: bytes, content_type: str, key: str | None = None) -> str:
        """As `ImageStore.put`."""
        if key is None:
            key = _content_key(data, content_type)
            if self.path(key).is_file():
                return key
        else:
            validate_key(key)
            extension_for_content_type(content_type)
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=_UNFINISHED, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as temp:
                temp.write(data)
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        return key

    def path(self, key: str) -> Path:
        """Where `key` lies (a checked key: see `validate_key`)."""
        return self.root.joinpath(*key.split("/"))


class DiskImageStore:
    """Images as files under `root`. Writes are atomic (temporary file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._writer = FolderWriter(self.root)

    def __repr__(self) -> str:
        return f"DiskImageStore(root={str(self.root)!r})"

    async def put(self, data: bytes, *, content_type: str, key: str | None = None) -> str:
        return await asyncio.to_thread(self._writer.put, data, content_type, key)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._get, validate_key(key))

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, validate_key(key))

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(validate_key(key)).is_file)

    async def keys(self, *, prefix: str = "", written_before: datetime | None = None) -> list[str]:
        return await asyncio.to_thread(self._keys, prefix, written_before)

    async def aclose(self) -> None:
        return None

    def local_writer(self) -> FolderWriter:
        return self._writer

    def _path(self, key: str) -> Path:
        return self._writer.path(key)

    def _get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ImageNotFound(key) from None

    def _delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            path.unlink(missing_ok=True)

    async def sweep_unfinished(self, *, written_before: datetime) -> int:
        return await asyncio.to_thread(self._sweep_unfinished, written_before)

    def _sweep_unfinished(self, written_before: datetime) -> int:
        swept = 0
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                path = Path(dirpath, name)
                if name.startswith(_UNFINISHED) and _modified(path) < written_before:
                    path.unlink(missing_ok=True)
                    swept += 1
        return swept

    def _keys(self, prefix: str, written_before: datetime | None) -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            relative = Path(dirpath).relative_to(self.root)
            for name in filenames:
                key = (relative / name).as_posix()
                if name.startswith(".") or not key.startswith(prefix):
                    continue
                if written_before is not None and _modified(Path(dirpath, name)) >= written_before:
                    continue
                found.append(key)
        return sorted(found)


def missing_s3_support() -> str | None:
    """What to install when the S3 store's client library is not importable, else None."""
    try:
        import aioboto3  # noqa: F401
    except ImportError:
        return "aioboto3 is not installed: pip install 'headshot-bot[s3]'"
    return None


class S3ImageStore:
    """Images as objects in an S3-compatible bucket (AWS, MinIO, R2...), via aioboto3."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
    ) -> None:
        try:
            import aioboto3
        except ImportError:
            raise ImageStoreConfigError(
                "S3_BUCKET is set but aioboto3 is not installed: pip install 'headshot-bot[s3]'"
            ) from None
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.prefix = f"{validate_key(prefix.strip('/'))}/" if prefix.strip("/") else ""
        self._session = aioboto3.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
        )
        self._client: Any = None
        self._exit_stack = contextlib.AsyncExitStack()
        self._client_lock = asyncio.Lock()

    def __repr__(self) -> str:
        # Deliberately leaves out the credentials.
        return (
            f"S3ImageStore(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r}, "
            f"region={self.region!r}, prefix={self.prefix!r})"
        )

    async def put(self, data: bytes, *, content_type: str, key: str | None = None) -> str:
        if key is None:
            key = await asyncio.to_thread(_content_key, data, content_type)
            if await self.exists(key):
                return key
        else:
            validate_key(key)
            extension_for_content_type(content_type)
        client = await self._get_client()
        await client.put_object(
            Bucket=self.bucket, Key=self._object_key(key), Body=data, ContentType=content_type
        )
        return key

    async def get(self, key: str) -> bytes:
        client = await self._get_client()
        try:
            response = await client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except Exception as exc:
            if _is_not_found(exc):
                raise ImageNotFound(key) from None
            raise
        async with response["Body"] as body:
            return bytes(await body.read())

    async def delete(self, key: str) -> None:
        client = await self._get_client()
        await client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    async def exists(self, key: str) -> bool:
        client = await self._get_client()
        try:
            await client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except Exception as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    async def keys(self, *, prefix: str = "", written_before: datetime | None = None) -> list[str]:
        client = await self._get_client()
        paginator = client.get_paginator("list_objects_v2")
        found = []
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            found.extend(
                item["Key"][len(self.prefix) :]
                for item in page.get("Contents", ())
                if written_before is None or item["LastModified"] < written_before
            )
        return sorted(found)

    async def sweep_unfinished(self, *, written_before: datetime) -> int:
        return 0  # an object is written whole or not at all

    def local_writer(self) -> None:
        return None  # a bucket, written through its API

    async def aclose(self) -> None:
        async with self._client_lock:
            self._client = None
            await self._exit_stack.aclose()

    def _object_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    async def _get_client(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                self._client = await self._exit_stack.enter_async_context(self._new_client())
            return self._client

    def _new_client(self) -> Any:
        from botocore.config import Config

        # Path-style addressing is what MinIO and most self-hosted endpoints expect.
        addressing = "path" if self.endpoint_url else "auto"
        config = Config(s3={"addressing_style": addressing}, retries={"mode": "standard"})
        return self._session.client("s3", endpoint_url=self.endpoint_url, config=config)


def _is_not_found(exc: Exception) -> bool:
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


def open_image_store(
    *,
    data_dir: Path,
    s3_bucket: str | None,
    s3_endpoint_url: str | None = None,
    s3_region: str | None = None,
    s3_access_key_id: str | None = None,
    s3_secret_access_key: str | None = None,
    s3_prefix: str = "",
) -> ImageStore:
    """The S3 store when a bucket is configured, else a disk store rooted at `data_dir`."""
    if s3_bucket:
        return S3ImageStore(
            s3_bucket,
            endpoint_url=s3_endpoint_url,
            region=s3_region,
            access_key_id=s3_access_key_id,
            secret_access_key=s3_secret_access_key,
            prefix=s3_prefix,
        )
    return DiskImageStore(Path(data_dir))
