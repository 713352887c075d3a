"""The messages noted as showing a job's images: kept with the job, handed back (each once) by
deleting it or forgetting its owner, their rows gone in the same transaction; on a real SQLite
file and a real PostgreSQL."""

from __future__ import annotations

from storage.database import Database
from storage.posts import PostRepository
from storage.records import JobDeletion, Post
from tests import test_storage_history as th


def post(message: str, chat: str = "-100", kind: str = "photo") -> Post:
    return Post("telegram", chat, message, kind)


async def test_deleting_a_job_hands_back_its_posts_once(db: Database) -> None:
    world, posts = th.World(db), PostRepository(db)
    me = await world.accounts.user("telegram", "501")
    first = await world.job(th._hex("a1"), me, keep_inputs=True)
    second = await world.job(th._hex("b2"), me)
    page = post("9", chat="501", kind="text")  # a history page's text shows both jobs
    assert await posts.record(first, [post("1"), post("2"), page])
    assert await posts.record(second, [post("3"), page])

    deletion = await world.history.delete(first)
    # Its outputs' key is the second job's too: only its selfie goes from the store.
    assert deletion == JobDeletion((f"inputs/{first}.jpg",), (post("1"), post("2"), page))
    assert await posts.of_job(first) == []
    assert await posts.of_job(second) == [post("3"), page]
    # A message shown after the job went is not noted: the caller removes it at once.
    assert not await posts.record(first, [post("4")])
    assert not await posts.record("no such job", [post("5")])
    assert await posts.of_job(first) == []


async def test_forgetting_hands_back_every_post_of_every_job(db: Database) -> None:
    world, posts = th.World(db), PostRepository(db)
    me = await world.accounts.user("telegram", "501")
    other = await world.accounts.user("telegram", "502")
    mine = [await world.job(th._hex("c", n), me) for n in range(2)]
    theirs = await world.job(th._hex("d"), other)
    await posts.record(mine[0], [post("1"), post("2")])
    await posts.record(mine[1], [post("3", chat="501", kind="document")])
    await posts.record(theirs, [post("7")])

    report = await world.forget(me)
    assert report.posts == (post("1"), post("2"), post("3", chat="501", kind="document"))
    assert await posts.of_job(theirs) == [post("7")]
    assert th.query(db.url, "SELECT count(*) FROM posts") == [(1,)]
