"""The provider's queue, in the database: which waiting job gets the next provider slot.

ModelsLab caps the requests an account may have queued (5, 10 or 15), whichever process sends
them. So the slots are counted here, once for every process on the database: a job holds one
while it is `submitted` or `processing`. A *dispatch pass* hands the free ones out. It runs
under one lock (the `dispatch_state` row, FOR UPDATE on PostgreSQL; SQLite's writers take turns
anyway), so two processes never hand out the same slot.

Jobs do not get slots in arrival order: one user who submits ten jobs would then hold up
everyone who comes after them. Every job is given a *place* in a fair line instead, by the pass
that first sees it:

* ``current_round`` is the round of the job given a slot most recently (0 at the start). It
  never goes down.
* A new job of user ``u`` gets round ``max(current_round, last + 1)``, where ``last`` is the
  round of ``u``'s latest job still waiting or already given a slot, among rounds from
  ``current_round`` on (``current_round`` if ``u`` has none).
* Its slot is 1 + the number of places already given in that round to its community (direct
  messages are one community of their own), so a busy server cannot crowd out a quiet one.
* Jobs get slots in ``(round, slot, sequence)`` order, the sequence being the order in which
  passes placed them. Within one user, jobs keep their arrival order.

So each user gets one job per round: a user with ``a`` jobs waiting puts a new job at most
``a + 1`` rounds past ``current_round``, and while it waits any other single user gets at most
``a + 2`` jobs through, however many they have queued.

A job that ends while it waits gives its place to its user's next waiting job, that one's place
to the next, and so on; the user's last place is given up (the ended job's row keeps it, so
that the slot counts stay as they were: a place carries the community its slot was counted
for). Nobody else's place changes.

Only jobs whose process is alive (a live lease) are given slots: a job whose process died keeps
its place until another process takes it over.

The slots come in *pools*: one for every operation (a provider account), or one per set of
operations that GPU workers serve (the fleet: a worker serving only avatars has no room for a
headshot). A waiting job is given a slot from a pool of its operation with room, in line order;
a job whose pools are all full keeps its place, and those behind it of other operations may go
first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.database import Database
from storage.leases import database_now
from storage.models import DispatchState, Job, utcnow
from storage.records import JobState

_JOBS = Job.__table__
_STATE = DispatchState.__table__
IN_FLIGHT = (JobState.SUBMITTED.value, JobState.PROCESSING.value)
_QUEUED = JobState.QUEUED.value
# How many recent generations the typical generation time is the median of.
RECENT_GENERATIONS = 50

Place = tuple[int, int, int]  # (round, slot, sequence): the line's order


@dataclass(frozen=True)
class Pool:
    """Slots shared by some operations: the workers that serve exactly those (None: every
    operation, as one provider account)."""

    operations: frozenset[str] | None
    slots: int
    # Its jobs go through only to be refused by the generator at once (no GPU worker serves
    # their operation now), rather than wait in line with no end: not the generator's capacity.
    to_refuse: bool = False

    def holds(self, operation: str) -> bool:
        return self.operations is None or operation in self.operations


class _Use:
    """How full each pool is during a pass. A job in flight is counted in every pool holding
    its operation: which of them runs it is not known, so none is overfilled."""

    def __init__(self, pools: list[Pool], in_flight: Counter[str]) -> None:
        self._pools = pools
        self._used = [
            sum(count for operation, count in in_flight.items() if pool.holds(operation))
            for pool in pools
        ]

    def free(self, index: int) -> int:
        return self._pools[index].slots - self._used[index]

    def take(self, operation: str) -> bool:
        """Count a job of `operation` in, if a pool of its operation has room for it."""
        if not any(
            pool.holds(operation) and used < pool.slots
            for pool, used in zip(self._pools, self._used, strict=True)
        ):
            return False
        for index, pool in enumerate(self._pools):
            if pool.holds(operation):
                self._used[index] += 1
        return True


@dataclass(frozen=True)
class Arrival:
    """A job the line has not placed yet."""

    job_id: str
    user: Any
    community: Any


@dataclass
class Line:
    """What placing new jobs needs to know of the line as it stands."""

    current_round: int
    next_seq: int
    last_round: dict[Any, int]  # user -> round of their latest waiting or dispatched job
    given: Counter[tuple[int, Any]]  # (round, community) -> places given

    def place(self, arrival: Arrival) -> Place:
        last = self.last_round.get(arrival.user)
        round_ = self.current_round if last is None else max(self.current_round, last + 1)
        self.given[round_, arrival.community] += 1
        place = (round_, self.given[round_, arrival.community], self.next_seq)
        self.next_seq += 1
        self.last_round[arrival.user] = round_
        return place


@dataclass(frozen=True)
class DispatchPass:
    placed: int  # jobs given their place in the line
    granted: list[str]  # jobs given a provider slot, in line order

    @property
    def changed(self) -> bool:
        return bool(self.placed or self.granted)


class DispatchQueue:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def dispatch(
        self, pools: Sequence[Pool] | int, *, answered: Collection[str] = ()
    ) -> DispatchPass:
        """Place the jobs queued since the last pass, then give free provider slots to the
        first waiting jobs in line whose process is alive: a job gets one from the first pool
        of its operation with room (in flight counted per operation, across every process,
        but for `answered`: jobs the generator has answered whose rows say otherwise until
        their end is written). An int is one pool of that many slots for every operation. The
        jobs given a slot are `submitted` now: their processes send them."""
        pools = [Pool(None, pools)] if isinstance(pools, int) else list(pools)

        async def write(conn: AsyncConnection) -> DispatchPass:
            state = await lock_line(conn)
            placed = await _place_new(conn, state)
            use = _Use(pools, await _in_flight_by_operation(conn, answered))
            candidates: dict[str, tuple[Place, str, int]] = {}
            for index, pool in enumerate(pools):
                free = use.free(index)
                if free <= 0:
                    continue
                query = (
                    select(_JOBS.c.id, _JOBS.c.operation, *_LINE_ORDER)
                    .where(*_waiting(), _JOBS.c.lease_expires_at > database_now(conn))
                    .order_by(*_LINE_ORDER)
                    .limit(free)
                    .with_for_update()
                )
                if pool.operations is not None:
                    query = query.where(_JOBS.c.operation.in_(sorted(pool.operations)))
                for row in await conn.execute(query):
                    place = (row.queue_round, row.queue_slot, row.queue_seq)
                    candidates[row.id] = (place, row.operation, row.queue_round)
            granted: list[tuple[str, int]] = []
            for job_id, (_, operation, round_) in sorted(
                candidates.items(), key=lambda item: item[1][0]
            ):
                if use.take(operation):
                    granted.append((job_id, round_))
            if granted:
                now = utcnow()
                await conn.execute(
                    update(_JOBS)
                    .where(_JOBS.c.id.in_([job_id for job_id, _ in granted]))
                    .values(state=JobState.SUBMITTED.value, dispatched_at=now, updated_at=now)
                )
                state.current_round = max(state.current_round, granted[-1][1])
            await conn.execute(
                update(_STATE)
                .where(_STATE.c.id == 1)
                .values(current_round=state.current_round, next_seq=state.next_seq)
            )
            return DispatchPass(placed, [job_id for job_id, _ in granted])

        return await self._db.run_write(write)

    async def waiting(self) -> list[str]:
        """The placed waiting jobs, in the order they will get slots (if nothing else comes)."""
        async with self._db.read() as conn:
            rows = await conn.execute(select(_JOBS.c.id).where(*_waiting()).order_by(*_LINE_ORDER))
            return [row.id for row in rows]

    async def positions(self, job_ids: Iterable[str]) -> dict[str, int]:
        """1-based places in the line of those of `job_ids` that wait and are placed."""
        wanted = set(job_ids)
        if not wanted:
            return {}
        line = await self.waiting()
        return {job_id: i for i, job_id in enumerate(line, 1) if job_id in wanted}

    async def position(self, job_id: str) -> int | None:
        """1-based place in the line of one job, if it waits and is placed: the jobs ahead of
        it are counted by the database, not read (a burst's every newcomer asks its place)."""
        async with self._db.read() as conn:
            found = await conn.scalar(_POSITION, {"job": job_id})
            return None if found is None else int(found)

    async def waiting_count(self) -> int:
        async with self._db.read() as conn:
            count = await conn.scalar(select(func.count()).select_from(_JOBS).where(*_waiting()))
            return int(count or 0)

    async def in_flight(self) -> int:
        async with self._db.read() as conn:
            count = await conn.scalar(
                select(func.count()).select_from(_JOBS).where(_JOBS.c.state.in_(IN_FLIGHT))
            )
            return int(count or 0)

    async def granted_among(self, job_ids: Sequence[str]) -> set[str]:
        """Those of `job_ids` that no longer wait (given a slot, or ended)."""
        if not job_ids:
            return set()
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(_JOBS.c.id).where(_JOBS.c.id.in_(job_ids), _JOBS.c.state != _QUEUED)
            )
            return {row.id for row in rows}

    async def recent_generation_seconds(self) -> list[float]:
        """How long the provider took on the most recent jobs, submit to result."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(_JOBS.c.submitted_at, _JOBS.c.completed_at)
                .where(_JOBS.c.completed_at.is_not(None), _JOBS.c.submitted_at.is_not(None))
                .order_by(_JOBS.c.completed_at.desc())
                .limit(RECENT_GENERATIONS)
            )
            return [_seconds(row.submitted_at, row.completed_at) for row in rows]


@dataclass(frozen=True)
class HeldPlace:
    """A waiting job's place, about to be given up (see `give_up_place`)."""

    job_id: str
    user_id: int
    place: tuple[int, int, int, Any]


async def waiting_place(conn: AsyncConnection, job_id: str) -> HeldPlace | None:
    """The place of a job that waits in line, with the line locked to the end of the
    transaction (before the job's row is changed: the lock order of every pass); None if the
    job does not wait."""
    row = (
        await conn.execute(
            select(_JOBS.c.user_id, _JOBS.c.state, *_PLACE).where(_JOBS.c.id == job_id)
        )
    ).one_or_none()
    if row is None or row.state != _QUEUED or row.queue_seq is None:
        return None
    await lock_line(conn)
    return HeldPlace(job_id, row.user_id, _place_of(row))


async def give_up_place(conn: AsyncConnection, held: HeldPlace) -> None:
    """A waiting job ended without a slot: each of its user's later waiting jobs moves up into
    the place of the one before it, and the ended job's row takes the user's last place."""
    own = held.place
    later = [
        (row.id, _place_of(row))
        for row in await conn.execute(
            select(_JOBS.c.id, *_PLACE)
            .where(*_waiting(), _JOBS.c.user_id == held.user_id, _JOBS.c.id != held.job_id)
            .order_by(*_LINE_ORDER)
        )
        if _place_of(row)[:3] > own[:3]
    ]
    places = [own, *(place for _, place in later)]
    holders = [*(mover for mover, _ in later), held.job_id]
    for holder, (round_, slot, seq, community) in zip(holders, places, strict=True):
        await conn.execute(
            update(_JOBS)
            .where(_JOBS.c.id == holder)
            .values(queue_round=round_, queue_slot=slot, queue_seq=seq, queue_community=community)
        )


def _place_of(row: Any) -> tuple[int, int, int, Any]:
    return (row.queue_round, row.queue_slot, row.queue_seq, row.queue_community)


# ---- the pass's steps ---------------------------------------------------------------------

_PLACE = (_JOBS.c.queue_round, _JOBS.c.queue_slot, _JOBS.c.queue_seq, _JOBS.c.queue_community)
_LINE_ORDER = (_JOBS.c.queue_round, _JOBS.c.queue_slot, _JOBS.c.queue_seq)


async def _in_flight_by_operation(conn: AsyncConnection, answered: Collection[str]) -> Counter[str]:
    query = (
        select(_JOBS.c.operation, func.count().label("count"))
        .where(_JOBS.c.state.in_(IN_FLIGHT))
        .group_by(_JOBS.c.operation)
    )
    if answered:
        query = query.where(_JOBS.c.id.not_in(sorted(answered)))
    rows = await conn.execute(query)
    return Counter({row.operation: int(row.count) for row in rows})


def _waiting() -> tuple[Any, ...]:
    return (_JOBS.c.state == _QUEUED, _JOBS.c.queue_seq.is_not(None))


# Built once: an alias's columns are made anew for every alias, at a cost a burst notices.
_AHEAD = _JOBS.alias("ahead")
_POSITION = select(
    select(func.count() + 1)
    .select_from(_AHEAD)
    .where(
        _AHEAD.c.state == _QUEUED,
        _AHEAD.c.queue_seq.is_not(None),
        tuple_(_AHEAD.c.queue_round, _AHEAD.c.queue_slot, _AHEAD.c.queue_seq)
        < tuple_(*_LINE_ORDER),
    )
    .scalar_subquery()
).where(_JOBS.c.id == bindparam("job"), *_waiting())


@dataclass
class _State:
    current_round: int
    next_seq: int


async def lock_line(conn: AsyncConnection) -> _State:
    """Take the line's lock (held to the end of the transaction) and read its state. Whoever
    changes several jobs' rows in one transaction takes it first: the pass locks the rows of
    the jobs it gives slots to, so one order of locks for all keeps deadlocks out."""
    row = (
        await conn.execute(
            select(_STATE.c.current_round, _STATE.c.next_seq)
            .where(_STATE.c.id == 1)
            .with_for_update()
        )
    ).one()
    return _State(row.current_round, row.next_seq)


async def _place_new(conn: AsyncConnection, state: _State) -> int:
    arrivals = [
        Arrival(row.id, row.user_id, row.community_id)
        for row in await conn.execute(
            select(_JOBS.c.id, _JOBS.c.user_id, _JOBS.c.community_id)
            .where(_JOBS.c.state == _QUEUED, _JOBS.c.queue_seq.is_(None))
            .order_by(_JOBS.c.created_at, _JOBS.c.id)
        )
    ]
    if not arrivals:
        return 0
    line = Line(state.current_round, state.next_seq, {}, Counter())
    current = _JOBS.c.queue_round >= state.current_round
    held = (_JOBS.c.state == _QUEUED) | _JOBS.c.dispatched_at.is_not(None)
    users = {arrival.user for arrival in arrivals}
    for row in await conn.execute(
        select(_JOBS.c.user_id, func.max(_JOBS.c.queue_round).label("last"))
        .where(current, held, _JOBS.c.user_id.in_(users))
        .group_by(_JOBS.c.user_id)
    ):
        line.last_round[row.user_id] = row.last
    for row in await conn.execute(
        select(_JOBS.c.queue_round, _JOBS.c.queue_community, func.count().label("given"))
        .where(current)
        .group_by(_JOBS.c.queue_round, _JOBS.c.queue_community)
    ):
        line.given[row.queue_round, row.queue_community] = row.given
    places = []
    for arrival in arrivals:
        round_, slot, seq = line.place(arrival)
        places.append(
            {
                "job": arrival.job_id,
                "round": round_,
                "slot": slot,
                "seq": seq,
                "community": arrival.community,
            }
        )
    # One statement for every arrival (executemany): a pass after a burst places dozens.
    await conn.execute(_PLACE_ONE, places)
    state.next_seq = line.next_seq
    return len(arrivals)


_PLACE_ONE = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("job"))
    .values(
        queue_round=bindparam("round"),
        queue_slot=bindparam("slot"),
        queue_seq=bindparam("seq"),
        queue_community=bindparam("community"),
    )
)


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())
