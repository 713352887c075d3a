"""Outputs a GPU worker of the fleet wrote to our image store itself (`stored:` links): kept as
they are, checked to be there, never downloaded again; links the generator does not own are
downloaded as before."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from backends.base import StoredOutput
from backends.errors import OutputUnavailable
from bot.jobs.rehost import Rehoster, RehostFailed
from storage.imagestore import DiskImageStore
from tests.conftest import make_image

MAX_BYTES = 1_000_000


class Generator:
    """The two methods of `backends.base.Backend` the rehoster uses: a generator that owns
    `stored:` links (as the fleet's does) or not, counting what it is asked to download."""

    def __init__(self, *, owns_stored: bool, serves: bytes = b"") -> None:
        self._owns_stored = owns_stored
        self._serves = serves
        self.downloads: list[str] = []

    def owns_output(self, url: str) -> bool:
        return self._owns_stored and StoredOutput.parse(url) is not None

    async def download_output(self, url: str, *, max_bytes: int) -> bytes:
        self.downloads.append(url)
        if not self._serves:
            raise OutputUnavailable("stored outputs are never downloaded")
        return self._serves


def rehoster(generator: Generator, store: DiskImageStore) -> Rehoster:
    return Rehoster(generator, store, max_bytes=MAX_BYTES)  # type: ignore[arg-type]


def soon() -> float:
    return time.monotonic() + 30


@pytest.fixture
def store(tmp_path: Path) -> DiskImageStore:
    return DiskImageStore(tmp_path / "images")


async def stored_output(store: DiskImageStore, size: tuple[int, int] = (64, 48)) -> StoredOutput:
    data = make_image(size)
    key = await store.put(data, content_type="image/png")
    return StoredOutput(key, "image/png", size[0], size[1], len(data))


async def test_a_stored_output_is_recorded_as_it_is_without_a_download(
    store: DiskImageStore,
) -> None:
    generator = Generator(owns_stored=True)
    first, second = await stored_output(store), await stored_output(store, (32, 32))

    records = await rehoster(generator, store).rehost(
        "job1", (first.url, second.url), deadline=soon()
    )

    assert generator.downloads == []
    assert [(r.position, r.content_key) for r in records] == [(0, first.key), (1, second.key)]
    record = records[0]
    assert (record.job_id, record.content_type, record.width, record.height) == (
        "job1",
        "image/png",
        64,
        48,
    )
    assert record.size_bytes == first.size_bytes
    assert records[0].public_token != records[1].public_token
    assert sorted(await store.keys()) == sorted([first.key, second.key])


async def test_a_stored_output_missing_from_the_store_fails_the_job(
    store: DiskImageStore,
) -> None:
    generator = Generator(owns_stored=True)
    kept = await stored_output(store)
    await store.delete(kept.key)

    with pytest.raises(RehostFailed, match="could not be found"):
        await rehoster(generator, store).rehost("job1", (kept.url,), deadline=soon())
    assert generator.downloads == []


async def test_a_stored_output_larger_than_the_cap_is_refused(store: DiskImageStore) -> None:
    generator = Generator(owns_stored=True)
    kept = await stored_output(store)
    too_large = StoredOutput(kept.key, "image/png", 64, 48, MAX_BYTES + 1)

    with pytest.raises(RehostFailed, match="larger than we accept"):
        await rehoster(generator, store).rehost("job1", (too_large.url,), deadline=soon())
    assert generator.downloads == []


@pytest.mark.parametrize(
    "mangle",
    [
        lambda url: url.replace("stored:", "stored:../"),
        lambda url: url.replace("width=64", "width=0"),
        lambda url: url + "&extra=1",
        lambda url: url.replace("image/png", "image/gif"),
    ],
    ids=["path", "zero width", "extra field", "other type"],
)
async def test_a_link_not_exactly_of_the_stored_form_is_not_taken_for_one(
    store: DiskImageStore, mangle: Callable[[str], str]
) -> None:
    generator = Generator(owns_stored=True)
    kept = await stored_output(store)

    with pytest.raises(RehostFailed, match="expired"):
        await rehoster(generator, store).rehost("job1", (mangle(kept.url),), deadline=soon())
    assert generator.downloads == [mangle(kept.url)]  # handed to the generator, which refuses


async def test_a_stored_link_from_a_generator_that_does_not_own_it_is_downloaded(
    store: DiskImageStore,
) -> None:
    served = make_image((40, 40))
    generator = Generator(owns_stored=False, serves=served)
    elsewhere = StoredOutput("0" * 64 + ".png", "image/png", 40, 40, len(served))

    records = await rehoster(generator, store).rehost("job1", (elsewhere.url,), deadline=soon())

    assert generator.downloads == [elsewhere.url]
    assert await store.get(records[0].content_key) == served
