"""The messages chat platforms show jobs' images in, kept as long as the job.

A result's message, each item of an album, a result shown again from the history: each is
noted against the job it shows, so that deleting or forgetting the job hands them back for the
adapter to remove. The ids are the platform's own, opaque here. The rows go in the transaction
that deletes the job (`take_posts`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.database import Database
from storage.models import Job, Post, utcnow
from storage.records import Post as PostRecord

_POSTS = Post.__table__
_JOBS = Job.__table__


class PostRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, job_id: str, posts: Sequence[PostRecord]) -> bool:
        """Note messages showing this job's images. False, noting nothing, when the job was
        deleted meanwhile (or never was): the caller removes them at once."""
        if not posts:
            return True

        async def write(conn: AsyncConnection) -> bool:
            alive = (
                await conn.execute(
                    select(_JOBS.c.id)
                    .where(_JOBS.c.id == job_id, _JOBS.c.deleted_at.is_(None))
                    # Shared: a deletion of the job waits for this note, or this one for it.
                    .with_for_update(read=True)
                )
            ).scalar_one_or_none()
            if alive is None:
                return False
            now = utcnow()
            await conn.execute(
                insert(_POSTS),
                [
                    {
                        "job_id": job_id,
                        "platform": post.platform,
                        "chat": post.chat,
                        "message": post.message,
                        "kind": post.kind,
                        "posted_at": now,
                    }
                    for post in posts
                ],
            )
            return True

        return await self._db.run_write(write)

    async def of_job(self, job_id: str) -> list[PostRecord]:
        """The messages noted for a job, in the order they were posted."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(_POSTS.c.platform, _POSTS.c.chat, _POSTS.c.message, _POSTS.c.kind)
                .where(_POSTS.c.job_id == job_id)
                .order_by(_POSTS.c.id)
            )
            return [PostRecord(*row) for row in rows]


async def take_posts(conn: AsyncConnection, job_ids: Sequence[str]) -> tuple[PostRecord, ...]:
    """Delete these jobs' post rows and hand back the messages, each once (a history page's
    text is noted for every job it lists), in the order they were posted."""
    if not job_ids:
        return ()
    deleted = await conn.execute(
        delete(_POSTS)
        .where(_POSTS.c.job_id.in_(list(job_ids)))
        .returning(_POSTS.c.id, _POSTS.c.platform, _POSTS.c.chat, _POSTS.c.message, _POSTS.c.kind)
    )
    rows = sorted(deleted.all(), key=lambda row: row.id)
    posts: dict[tuple[str, str, str], PostRecord] = {}
    for row in rows:
        posts.setdefault(
            (row.platform, row.chat, row.message),
            PostRecord(row.platform, row.chat, row.message, row.kind),
        )
    return tuple(posts.values())
