"""The identity gate's measures, in the caller's transaction: each generated image of a job,
how far its face is from the selfie's, and (while the job runs) the image itself.

A job that the gate sends back to the generator keeps the images it has measured so far here,
so that its end can pick, per image it owes, one that passed or else the closest one, whichever
process ends it. When the job ends, every row lets go of its image: the delivered ones live on
as outputs, the others are deleted from the store by the caller. The measure stays, for the
statistics, until the job is deleted or its user forgotten. No embedding is ever stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import IdentityCheck, Output, utcnow
from storage.records import OutputRecord

_CHECKS = IdentityCheck.__table__


@dataclass(frozen=True)
class MeasuredImage:
    """A generated image of a job and its measure. `image.position` is the slot it would fill
    (which of the job's images it is)."""

    image: OutputRecord
    attempt: int
    operation: str
    backend: str
    distance: float | None  # None: no face found in the image (or none in the selfie)
    passed: bool | None  # None: the selfie had no face to compare with (nothing judged)
    seconds: float

    @property
    def slot(self) -> int:
        return self.image.position

    @property
    def failed(self) -> bool:
        return self.passed is False

    def as_output(self) -> OutputRecord:
        return replace(self.image, identity_distance=self.distance, identity_passed=self.passed)


def best_per_slot(images: Iterable[MeasuredImage]) -> list[MeasuredImage]:
    """Per slot, the image to deliver: the first that passed, else the closest (an image with no
    face comes last), the earlier attempt on a tie. Sorted by slot."""
    chosen: dict[int, MeasuredImage] = {}
    for image in sorted(images, key=lambda m: (m.slot, m.attempt)):
        held = chosen.get(image.slot)
        if held is None or _rank(image) < _rank(held):
            chosen[image.slot] = image
    return [chosen[slot] for slot in sorted(chosen)]


def _rank(image: MeasuredImage) -> tuple[int, float]:
    if image.passed is not False:
        return (0, 0.0)
    return (1, image.distance) if image.distance is not None else (2, 0.0)


async def record(conn: AsyncConnection, images: Iterable[MeasuredImage], *, keep: bool) -> None:
    """Write these measures; with `keep`, with their images (the job goes on)."""
    rows = [_row(image, keep) for image in images]
    if rows:
        await conn.execute(insert(_CHECKS), rows)


async def kept(conn: AsyncConnection, job_id: str) -> list[MeasuredImage]:
    """The images a running job has measured and kept so far, oldest attempt first."""
    rows = await conn.execute(
        select(_CHECKS)
        .where(_CHECKS.c.job_id == job_id, _CHECKS.c.content_key.is_not(None))
        .order_by(_CHECKS.c.attempt, _CHECKS.c.slot)
    )
    return [_measured(row) for row in rows]


async def let_go(conn: AsyncConnection, job_id: str) -> list[str]:
    """The job has ended: its rows let go of their images; the image keys they held."""
    rows = await conn.execute(
        update(_CHECKS)
        .where(_CHECKS.c.job_id == job_id, _CHECKS.c.content_key.is_not(None))
        .values(content_key=None, content_type=None, width=None, height=None, size_bytes=None)
        .returning(_CHECKS.c.content_key)
    )
    return [key for key in rows.scalars() if key]


async def in_use(conn: AsyncConnection, keys: Iterable[str]) -> set[str]:
    """Which of these image keys an output or a running job's kept image points at (the store
    is content-addressed: two jobs can make the same image)."""
    wanted = sorted(set(keys))
    if not wanted:
        return set()
    outputs = Output.__table__
    held = await conn.execute(
        select(outputs.c.content_key)
        .where(outputs.c.content_key.in_(wanted))
        .union(select(_CHECKS.c.content_key).where(_CHECKS.c.content_key.in_(wanted)))
    )
    return set(held.scalars())


def _row(image: MeasuredImage, keep: bool) -> dict[str, Any]:
    out = image.image
    held = {
        "content_key": out.content_key,
        "content_type": out.content_type,
        "width": out.width,
        "height": out.height,
        "size_bytes": out.size_bytes,
    }
    return {
        "job_id": out.job_id,
        "attempt": image.attempt,
        "slot": image.slot,
        "operation": image.operation,
        "backend": image.backend,
        "distance": image.distance,
        # None: no judgement could be made (no face in the selfie, or the checker failed); the
        # image is delivered as a pass would be, and left out of the pass rate.
        "passed": image.passed,
        "seconds": image.seconds,
        "created_at": utcnow(),
        **(held if keep else dict.fromkeys(held)),
    }


def _measured(row: Any) -> MeasuredImage:
    image = OutputRecord(
        job_id=row.job_id,
        position=row.slot,
        content_key=row.content_key,
        public_token="",
        content_type=row.content_type,
        width=row.width,
        height=row.height,
        size_bytes=row.size_bytes,
    )
    return MeasuredImage(
        image=image,
        attempt=row.attempt,
        operation=row.operation,
        backend=row.backend,
        distance=row.distance,
        passed=row.passed,
        seconds=row.seconds,
    )
