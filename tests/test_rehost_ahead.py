"""Outputs downloaded and checked ahead (`Rehoster.check_ahead`), while the engine records the
provider's answer: stored only by `rehost`, downloaded once, and nothing left behind by a job
that moved on meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.jobs.rehost import Rehoster, RehostFailed
from storage.imagestore import DiskImageStore
from tests.conftest import make_image
from tests.test_rehost_stored import Generator, rehoster, soon

LINK = "https://cdn.example/out/1.png"
OTHER = "https://cdn.example/out/2.png"


@pytest.fixture
def store(tmp_path: Path) -> DiskImageStore:
    return DiskImageStore(tmp_path / "images")


async def _downloaded(generator: Generator, count: int) -> None:
    async with asyncio.timeout(10):
        while len(generator.downloads) < count:
            await asyncio.sleep(0.01)


async def _checking_ahead(store: DiskImageStore, generator: Generator) -> Rehoster:
    """A rehoster that has begun checking LINK ahead for job1, and downloaded it."""
    keeper = rehoster(generator, store)
    keeper.check_ahead("job1", (LINK,), deadline=soon())
    await _downloaded(generator, 1)
    return keeper


async def test_checked_ahead_is_downloaded_once_and_stored_only_by_rehost(
    store: DiskImageStore,
) -> None:
    generator = Generator(owns_stored=False, serves=make_image((40, 30)))
    keeper = await _checking_ahead(store, generator)
    await asyncio.sleep(0.2)  # the check in the image workers ends too
    assert await store.keys() == []  # nothing stored before the result is recorded

    (record,) = await keeper.rehost("job1", (LINK,), deadline=soon())
    assert generator.downloads == [LINK]
    assert (record.width, record.height) == (40, 30)
    assert await store.keys() == [record.content_key]


async def test_a_job_that_moved_on_leaves_nothing_and_a_later_rehost_downloads_again(
    store: DiskImageStore,
) -> None:
    generator = Generator(owns_stored=False, serves=make_image((40, 30)))
    keeper = await _checking_ahead(store, generator)
    keeper.drop_ahead("job1")
    await asyncio.sleep(0.2)
    assert await store.keys() == []

    await keeper.rehost("job1", (LINK,), deadline=soon())
    assert generator.downloads == [LINK, LINK]


async def test_other_links_than_those_checked_ahead_are_downloaded_instead(
    store: DiskImageStore,
) -> None:
    generator = Generator(owns_stored=False, serves=make_image((40, 30)))
    keeper = await _checking_ahead(store, generator)
    records = await keeper.rehost("job1", (OTHER,), deadline=soon())
    assert generator.downloads == [LINK, OTHER]
    assert len(records) == 1


async def test_a_failure_ahead_is_the_failure_of_rehost(store: DiskImageStore) -> None:
    generator = Generator(owns_stored=False)  # every download: the link has expired
    keeper = await _checking_ahead(store, generator)
    with pytest.raises(RehostFailed, match="expired"):
        await keeper.rehost("job1", (LINK,), deadline=soon())
    assert generator.downloads == [LINK]
