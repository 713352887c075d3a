"""Outputs and selfies stored by the decode worker that checked them, where the image store is a
folder here: the bytes are written there, never by the service's own threads; a store that is
not a folder here is written from the service, as before. An attempt whose other output fails
says which outputs it had stored already."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.images import ImageRejected, ImageWorkers
from bot.images.workers import install, uninstall
from bot.jobs.rehost import Rehoster, RehostFailed
from storage.imagestore import DiskImageStore, FolderWriter
from tests.conftest import make_image

GOOD = make_image((64, 48))
NOT_AN_IMAGE = b"%PDF-1.7 this is no picture"


class CountingStore(DiskImageStore):
    """The real disk store, counting the writes the service makes itself."""

    def __init__(self, root: Path, *, local: bool) -> None:
        super().__init__(root)
        self._local = local
        self.service_puts = 0

    async def put(self, data: bytes, *, content_type: str, key: str | None = None) -> str:
        self.service_puts += 1
        return await super().put(data, content_type=content_type, key=key)

    def local_writer(self) -> FolderWriter | None:  # type: ignore[override]
        return super().local_writer() if self._local else None


class Generator:
    """`Backend.owns_output` and `download_output`: each URL's bytes as given."""

    def __init__(self, outputs: dict[str, bytes]) -> None:
        self._outputs = outputs

    def owns_output(self, url: str) -> bool:
        return False  # every output is downloaded

    async def download_output(self, url: str, *, max_bytes: int) -> bytes:
        return self._outputs[url]


@pytest.fixture
async def workers() -> AsyncIterator[ImageWorkers]:
    pool = ImageWorkers(workers=1, time_limit=30.0, max_waiting=8)
    await pool.start()
    install(pool)
    try:
        yield pool
    finally:
        uninstall(pool)
        await pool.aclose()


def rehoster(outputs: dict[str, bytes], store: DiskImageStore) -> Rehoster:
    return Rehoster(Generator(outputs), store, max_bytes=1_000_000)  # type: ignore[arg-type]


@pytest.mark.parametrize("local", [True, False], ids=["by the worker", "by the service"])
async def test_an_output_is_stored_by_the_worker_where_the_store_is_a_folder_here(
    workers: ImageWorkers, tmp_path: Path, local: bool
) -> None:
    store = CountingStore(tmp_path / "images", local=local)
    records = await rehoster({"https://cdn/0.png": GOOD}, store).rehost(
        "job1", ("https://cdn/0.png",), deadline=time.monotonic() + 30
    )
    (record,) = records
    assert await store.get(record.content_key) == GOOD
    assert (record.width, record.height, record.size_bytes) == (64, 48, len(GOOD))
    assert store.service_puts == (0 if local else 1)


@pytest.mark.parametrize("local", [True, False], ids=["by the worker", "by the service"])
async def test_a_selfie_is_sanitised_and_stored_at_its_key(
    workers: ImageWorkers, tmp_path: Path, local: bool, selfie: bytes
) -> None:
    store = CountingStore(tmp_path / "images", local=local)
    image = await workers.sanitise_into(
        store, "inputs/job1.jpg", selfie, max_bytes=10_000_000, subject="selfie"
    )
    assert await store.get("inputs/job1.jpg") == image.data
    assert image.data.startswith(b"\xff\xd8") and image.data != selfie  # re-encoded
    assert store.service_puts == (0 if local else 1)

    with pytest.raises(ImageRejected):
        await workers.sanitise_into(
            store, "inputs/job2.jpg", NOT_AN_IMAGE, max_bytes=10_000_000, subject="selfie"
        )
    assert await store.keys() == ["inputs/job1.jpg"]


async def test_a_failed_output_says_which_of_the_others_were_stored(
    workers: ImageWorkers, tmp_path: Path
) -> None:
    store = CountingStore(tmp_path / "images", local=True)
    outputs = {"https://cdn/0.png": GOOD, "https://cdn/1.png": NOT_AN_IMAGE}
    with pytest.raises(RehostFailed, match="isn't an image") as failed:
        await rehoster(outputs, store).rehost(
            "job1", tuple(outputs), deadline=time.monotonic() + 30
        )
    (kept,) = failed.value.stored
    assert await store.keys() == [kept]
    assert await store.get(kept) == GOOD
