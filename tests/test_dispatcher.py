"""The provider's queue in the database, on a real SQLite file and a real PostgreSQL: the cap is
never exceeded, however many processes hand out slots, and one user's burst of jobs cannot hold
everyone else up (round-robin across users, then communities)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, update

from bot.jobs.dispatcher import Dispatcher
from storage.accounts import AccountRepository
from storage.coordination import open_coordination
from storage.database import Database
from storage.dispatch import DispatchQueue, Pool
from storage.jobs import JobRepository
from storage.leases import Lease
from storage.models import DispatchState, Job
from storage.records import JobState
from tests.databases import new_job

TODAY = date(2026, 12, 3)
LEASE = Lease("here", 600)


class Line:
    """Jobs made in a real database and dispatch passes run one at a time, by hand: the slots
    handed out are recorded in order."""

    def __init__(self, db: Database, capacity: int | list[Pool]) -> None:
        self.db = db
        self.capacity = capacity
        self.accounts = AccountRepository(db)
        self.jobs = JobRepository(db)
        self.queue = DispatchQueue(db)
        self.dispatched: list[str] = []
        self.running: list[str] = []
        self._users: dict[Hashable, int] = {}
        self._communities: dict[Hashable, int] = {}

    async def arrive(
        self,
        job_id: str,
        user: Hashable,
        community: Hashable = None,
        *,
        lease: Lease = LEASE,
        operation: str = "headshot",
    ) -> None:
        if user not in self._users:
            self._users[user] = (await self.accounts.user("test", str(user))).id
        community_id = None
        if community is not None:
            if community not in self._communities:
                found = await self.accounts.community("test", str(community))
                self._communities[community] = found
            community_id = self._communities[community]
        new = new_job(job_id, self._users[user], community=community_id, operation=operation)
        await self.jobs.create(new, daily_quota=None, today=TODAY, lease=lease)
        await self.dispatch()

    async def dispatch(self) -> list[str]:
        granted = (await self.queue.dispatch(self.capacity)).granted
        self.dispatched += granted
        self.running += granted
        return granted

    async def finish(self, job_id: str) -> None:
        self.running.remove(job_id)
        assert await self.jobs.fail(job_id, "done")
        await self.dispatch()

    async def cancel(self, job_id: str) -> None:
        assert await self.jobs.fail(job_id, "cancelled", state=JobState.CANCELLED)
        await self.dispatch()

    async def waiting(self) -> list[str]:
        return await self.queue.waiting()

    async def drain(self) -> None:
        """Finish jobs, oldest first, until nothing runs or waits."""
        while self.running:
            await self.finish(self.running[0])
        assert await self.waiting() == []

    async def reset(self) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(Job.__table__))
            await conn.execute(update(DispatchState.__table__).values(current_round=0, next_seq=0))
        self.dispatched, self.running = [], []


# ---- the ordering ---------------------------------------------------------------------------


async def test_a_burst_from_one_user_does_not_hold_up_the_others(db: Database) -> None:
    line = Line(db, capacity=1)
    burst = [f"a{i}" for i in range(1, 11)]
    for job_id in burst:
        await line.arrive(job_id, "A", "guild")
    await line.arrive("b1", "B", "guild")
    await line.arrive("c1", "C", "guild")

    assert line.dispatched == ["a1"]
    assert await line.waiting() == ["b1", "c1", *burst[1:]]
    await line.drain()
    assert line.dispatched == ["a1", "b1", "c1", *burst[1:]]


async def test_each_user_gets_one_job_per_round(db: Database) -> None:
    line = Line(db, capacity=1)
    await line.arrive("z", "Z", "guild")  # holds the only slot
    for job_id, user in [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("b2", "B")]:
        await line.arrive(job_id, user, "guild")
    await line.arrive("c1", "C", "guild")

    assert await line.waiting() == ["a1", "b1", "c1", "a2", "b2", "a3"]
    await line.drain()
    assert line.dispatched == ["z", "a1", "b1", "c1", "a2", "b2", "a3"]


async def test_communities_take_turns_within_a_round(db: Database) -> None:
    line = Line(db, capacity=1)
    await line.arrive("z", "Z", "elsewhere")
    for job_id, user in [("a", "A"), ("b", "B"), ("c", "C")]:
        await line.arrive(job_id, user, "busy-server")
    await line.arrive("d", "D", "quiet-server")
    await line.arrive("e", "E", None)  # a DM: the DMs take their turn as one community

    assert await line.waiting() == ["a", "d", "e", "b", "c"]
    await line.drain()
    assert line.dispatched == ["z", "a", "d", "e", "b", "c"]


async def test_positions_follow_the_line(db: Database) -> None:
    line = Line(db, capacity=1)
    await line.arrive("z", "Z")
    await line.arrive("a1", "A")
    await line.arrive("a2", "A")
    await line.arrive("b1", "B")  # a newcomer goes ahead of A's second job
    assert await line.queue.positions(["a1", "b1", "a2", "z", "unknown"]) == {
        "a1": 1,
        "b1": 2,
        "a2": 3,
    }
    assert await line.queue.in_flight() == 1
    await line.finish("z")
    assert await line.queue.positions(["b1", "a2"]) == {"b1": 1, "a2": 2}


async def test_one_jobs_place_is_counted_as_the_line_reads(db: Database) -> None:
    line = Line(db, capacity=1)
    await line.arrive("z", "Z")  # in flight: no place
    for n in range(3):
        for user, community in (("A", "g1"), ("B", "g1"), ("C", "g2"), ("D", None)):
            await line.arrive(f"{user}{n}", user, community)
    waiting = await line.waiting()
    assert len(waiting) == 12
    assert [await line.queue.position(job_id) for job_id in waiting] == list(range(1, 13))
    assert await line.queue.position("z") is None
    assert await line.queue.position("unknown") is None
    await _create(line, "unplaced", "E")
    assert await line.queue.position("unplaced") is None


async def test_a_users_next_job_after_an_idle_spell_takes_the_next_round(db: Database) -> None:
    line = Line(db, capacity=1)
    await line.arrive("a1", "A")
    await line.finish("a1")
    await line.arrive("a2", "A")  # straight through again (round 1)
    await line.arrive("a3", "A")  # round 2
    await line.arrive("b1", "B")  # round 1: ahead of a3
    assert await line.waiting() == ["b1", "a3"]


async def test_capacity_is_shared_out_and_never_exceeded(db: Database) -> None:
    line = Line(db, capacity=2)
    for job_id in ("a1", "a2", "a3", "b1"):
        await line.arrive(job_id, job_id[0].upper())
    assert line.dispatched == ["a1", "a2"]
    assert await line.queue.in_flight() == 2
    assert await line.waiting() == ["b1", "a3"]
    await line.finish("a1")
    assert line.dispatched == ["a1", "a2", "b1"]
    assert await line.queue.in_flight() == 2


async def test_jobs_already_at_the_provider_count_against_the_cap(db: Database) -> None:
    line = Line(db, capacity=1)
    await line.arrive("resumed", "R")
    await line.jobs.transition("resumed", [JobState.SUBMITTED], JobState.PROCESSING)
    await line.arrive("a1", "A")
    assert line.dispatched == ["resumed"]
    await line.finish("resumed")
    assert line.dispatched == ["resumed", "a1"]


async def test_a_job_whose_answer_is_in_hand_frees_its_slot_for_this_process(
    db: Database,
) -> None:
    """The generator answered "processing" (its row says so until its end is written): the
    process holding the answer counts the slot free; a pass that does not know of the answer
    (another process's) still counts it taken."""
    line = Line(db, capacity=1)
    await line.arrive("answered", "R")
    await line.jobs.transition("answered", [JobState.SUBMITTED], JobState.PROCESSING)
    await line.arrive("a1", "A")
    assert (await line.queue.dispatch(1)).granted == []
    assert (await line.queue.dispatch(1, answered={"elsewhere"})).granted == []
    assert (await line.queue.dispatch(1, answered={"answered"})).granted == ["a1"]
    assert (await line.queue.dispatch(1, answered={"answered"})).granted == []  # a1 holds it


async def test_a_job_whose_process_died_keeps_its_place_but_gets_no_slot(db: Database) -> None:
    line = Line(db, capacity=1)
    await line.arrive("z", "Z")
    await line.arrive("orphan", "O", lease=Lease("dead", 0))  # its lease ran out at once
    await line.arrive("a1", "A")
    assert await line.waiting() == ["orphan", "a1"]
    await line.finish("z")
    assert line.dispatched == ["z", "a1"]  # skipped, not waited for
    taken = await line.jobs.take_over(LEASE)
    assert [job.id for job in taken] == ["orphan"]
    await line.finish("a1")
    assert line.dispatched == ["z", "a1", "orphan"]


async def test_cancelling_a_waiting_job_moves_its_users_later_jobs_up(db: Database) -> None:
    line = Line(db, capacity=1)
    await line.arrive("z", "Z")
    for job_id in ("a1", "a2", "a3"):
        await line.arrive(job_id, "A")
    await line.cancel("a1")
    await line.arrive("b1", "B")
    # a2 and a3 took the rounds a1 and a2 had: B's first job comes after A's first one only.
    assert await line.waiting() == ["a2", "b1", "a3"]


async def test_cancelling_a_users_latest_job_frees_its_round(db: Database) -> None:
    line = Line(db, capacity=1)
    await line.arrive("z", "Z")
    for job_id, user in [("a1", "A"), ("a2", "A"), ("b1", "B"), ("b2", "B"), ("b3", "B")]:
        await line.arrive(job_id, user)
    await line.cancel("a2")
    await line.arrive("a3", "A")  # back into the round a2 left, not behind B's whole burst
    assert await line.waiting() == ["a1", "b1", "b2", "a3", "b3"]


# ---- pools: slots that only some operations may use -------------------------------------------

FACES = Pool(frozenset({"headshot", "facegen"}), 1)  # one GPU worker serving these two
AVATARS = Pool(frozenset({"avatar"}), 1)  # another serving avatars only


async def test_a_job_gets_a_slot_from_its_own_pool_even_behind_jobs_of_a_full_one(
    db: Database,
) -> None:
    line = Line(db, [FACES, AVATARS])
    await line.arrive("h1", "A")
    await line.arrive("h2", "B")
    await line.arrive("f1", "C", operation="facegen")  # the headshot worker's, too: full
    await line.arrive("v1", "D", operation="avatar")  # behind them all, but its worker is free
    assert line.dispatched == ["h1", "v1"]
    assert await line.waiting() == ["h2", "f1"]
    await line.arrive("v2", "E", operation="avatar")
    assert await line.waiting() == ["h2", "f1", "v2"]
    await line.finish("v1")
    assert line.dispatched == ["h1", "v1", "v2"]


async def test_a_pool_with_no_room_keeps_its_jobs_waiting_in_the_fair_order(db: Database) -> None:
    line = Line(db, [FACES, AVATARS])
    await line.arrive("z", "Z")
    for job_id in ("a1", "a2", "a3"):
        await line.arrive(job_id, "A")
    await line.arrive("b1", "B", operation="facegen")
    await line.arrive("v1", "V", operation="avatar")
    assert line.dispatched == ["z", "v1"]
    assert await line.waiting() == ["a1", "b1", "a2", "a3"]
    await line.finish("v1")  # the avatar worker's room is no use to them
    assert await line.waiting() == ["a1", "b1", "a2", "a3"]
    await line.drain()
    assert line.dispatched == ["z", "v1", "a1", "b1", "a2", "a3"]


async def test_a_job_in_flight_counts_in_every_pool_that_could_be_running_it(
    db: Database,
) -> None:
    # Two workers serve headshots, one of them avatars too: which one runs a headshot is not
    # known, so both count it, and no worker is ever handed more than it holds.
    line = Line(db, [Pool(frozenset({"headshot"}), 1), Pool(frozenset({"headshot", "avatar"}), 1)])
    await line.arrive("h1", "A")
    await line.arrive("v1", "B", operation="avatar")
    await line.arrive("h2", "C")
    assert line.dispatched == ["h1"]
    await line.finish("h1")
    assert line.dispatched == ["h1", "v1", "h2"]  # one for each worker


async def test_no_pool_for_an_operation_keeps_its_jobs_waiting(db: Database) -> None:
    line = Line(db, [AVATARS])
    await line.arrive("h1", "A")
    await line.arrive("v1", "B", operation="avatar")
    assert line.dispatched == ["v1"]
    assert await line.waiting() == ["h1"]


async def test_the_dispatcher_reads_its_pools_at_every_pass(
    db: Database, database_url: str
) -> None:
    """A capacity source (the GPU workers alive): none at first, then one comes up."""
    line = Line(db, 1)
    pools: list[Pool] = []

    async def source() -> list[Pool]:
        return list(pools)

    coordination = open_coordination(database_url)
    dispatcher = Dispatcher(
        queue=DispatchQueue(db),
        coordination=coordination,
        capacity=source,
        origin="here",
        check_seconds=0.1,
    )
    dispatcher.start()
    try:
        await _create(line, "h1", "A")
        waiting = asyncio.create_task(dispatcher.acquire("h1"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert await line.queue.waiting() == ["h1"]
        assert dispatcher.capacity == 0
        pools.append(Pool(frozenset({"headshot"}), 2))
        async with asyncio.timeout(10):
            await waiting  # the periodic check finds the new room
        assert await dispatcher.current_capacity() == dispatcher.capacity == 2
        assert await line.queue.in_flight() == 1
        # A pool whose jobs go through only to be refused is not capacity.
        pools.append(Pool(frozenset({"avatar"}), 1, to_refuse=True))
        assert await dispatcher.current_capacity() == dispatcher.capacity == 2
    finally:
        await dispatcher.stop()
        await coordination.aclose()


# ---- two processes, one cap -------------------------------------------------------------------


@pytest.mark.parametrize("database_kind", ["sqlite", "postgresql"])
async def test_two_processes_share_one_cap_and_one_line(db: Database, database_url: str) -> None:
    """Two dispatchers (as in two replicas) on one database: never more than the cap in flight
    together, and slots given in the one fair line whichever process drives a job."""
    line = Line(db, capacity=2)
    coordinations = [open_coordination(database_url) for _ in range(2)]
    dispatchers = [
        Dispatcher(
            queue=DispatchQueue(db),
            coordination=coordination,
            capacity=2,
            origin=f"replica-{n}",
            check_seconds=0.2,
        )
        for n, coordination in enumerate(coordinations)
    ]
    for dispatcher in dispatchers:
        dispatcher.start()
    granted: list[str] = []
    peak = 0

    async def drive(job_id: str, dispatcher: Dispatcher) -> None:
        nonlocal peak
        await dispatcher.acquire(job_id)
        granted.append(job_id)
        peak = max(peak, await line.queue.in_flight())
        await asyncio.sleep(0.05)
        assert await line.jobs.fail(job_id, "done")
        dispatcher.changed()

    try:
        # A heavy user's four jobs driven by replica 0, then two light users' by replica 1,
        # all queued before any is driven.
        arrivals = [("h1", "H"), ("h2", "H"), ("h3", "H"), ("h4", "H"), ("l1", "L"), ("m1", "M")]
        for job_id, user in arrivals:
            await _create(line, job_id, user)
        tasks = [
            asyncio.create_task(drive(job_id, dispatchers[0 if n < 4 else 1]))
            for n, (job_id, _) in enumerate(arrivals)
        ]
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
    finally:
        for dispatcher in dispatchers:
            await dispatcher.stop()
        for coordination in coordinations:
            await coordination.aclose()
    assert sorted(granted) == ["h1", "h2", "h3", "h4", "l1", "m1"]
    assert peak <= 2
    # The light users' jobs went out before the heavy user's third and fourth.
    assert granted.index("l1") < granted.index("h3")
    assert granted.index("m1") < granted.index("h4")


async def _create(line: Line, job_id: str, user: str) -> None:
    """A queued job, not yet placed: the dispatchers place it."""
    user_id = (await line.accounts.user("test", user)).id
    await line.jobs.create(new_job(job_id, user_id), daily_quota=None, today=TODAY, lease=LEASE)


@pytest.mark.parametrize("capacity", [0, -1])
async def test_capacity_must_be_positive(db: Database, database_url: str, capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Dispatcher(
            queue=DispatchQueue(db),
            coordination=open_coordination(database_url),
            capacity=capacity,
            origin="here",
            check_seconds=1,
        )


# ---- properties over random interleavings ----------------------------------------------------

USERS = st.sampled_from(["u0", "u1", "u2"])
COMMUNITIES = st.sampled_from([None, "x", "y"])
ARRIVE = st.tuples(st.just("arrive"), USERS, COMMUNITIES)
# Arrivals twice as often as completions, so that lines build up; cancellations now and then.
STEP = st.one_of(
    ARRIVE,
    ARRIVE,
    st.tuples(st.just("finish"), st.integers(0, 20)),
    ARRIVE,
    st.tuples(st.just("finish"), st.integers(0, 20)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
)
SCENARIO = st.tuples(st.integers(1, 3), st.lists(STEP, min_size=20, max_size=60))


@dataclass
class Trace:
    user_of: dict[str, str] = field(default_factory=dict)
    # per job: how many jobs had been dispatched when it arrived, and how many of its user's
    # jobs were waiting then
    arrivals: dict[str, tuple[int, int]] = field(default_factory=dict)
    dispatched: list[str] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)
    lines: list[list[str]] = field(default_factory=list)  # the waiting line after each step

    def arrive(self, job_id: str, user: str, waiting: list[str]) -> None:
        ahead = sum(1 for other in waiting if self.user_of[other] == user)
        self.user_of[job_id] = user
        self.arrivals[job_id] = (len(self.dispatched), ahead)


def check_trace(trace: Trace) -> None:
    # Every job that was not cancelled is dispatched, and none twice.
    assert Counter(trace.dispatched) == Counter(set(trace.user_of) - trace.cancelled)
    index = {job_id: i for i, job_id in enumerate(trace.dispatched)}

    # One user's jobs go out in the order they came in.
    arrival_order = list(trace.arrivals)
    for user in set(trace.user_of.values()):
        theirs = [job_id for job_id in trace.dispatched if trace.user_of[job_id] == user]
        assert theirs == sorted(theirs, key=arrival_order.index)

    # Round-robin: while a job waits, no other user gets more than `ahead + 2` jobs through.
    for job_id, (dispatched_before, ahead) in trace.arrivals.items():
        end = index.get(job_id)
        if end is None:
            continue
        user = trace.user_of[job_id]
        overtaking = Counter(
            trace.user_of[other]
            for other in trace.dispatched[dispatched_before:end]
            if trace.user_of[other] != user
        )
        for other_user, count in overtaking.items():
            assert count <= ahead + 2, (job_id, other_user, count, ahead)


class ModelQueue:
    """The ordering rules written out as plainly as possible: every job is kept, every answer is
    worked out by scanning everything, nothing is pruned. Slow, but easy to check by eye."""

    def __init__(self) -> None:
        self.current_round = 0
        self.user: dict[str, Hashable] = {}
        self.arrival: dict[str, int] = {}
        self.place: dict[str, tuple[int, int, int]] = {}  # waiting or dispatched jobs
        self.waiting: list[str] = []
        self.given: Counter[tuple[int, Hashable]] = Counter()  # slots given per round+community

    def push(self, job_id: str, user: Hashable, community: Hashable = None) -> None:
        rounds = [place[0] for other, place in self.place.items() if self.user[other] == user]
        round_ = max(self.current_round, max(rounds) + 1) if rounds else self.current_round
        self.given[round_, community] += 1
        self.user[job_id], self.arrival[job_id] = user, len(self.arrival)
        self.place[job_id] = (round_, self.given[round_, community], self.arrival[job_id])
        self.waiting.append(job_id)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.waiting, key=self.place.__getitem__))

    def pop(self) -> str:
        job_id = next(iter(self))
        self.waiting.remove(job_id)
        self.current_round = self.place[job_id][0]
        return job_id

    def remove(self, job_id: str) -> None:
        # The user's remaining jobs, oldest first, take the user's places, earliest first.
        theirs = [other for other in self.waiting if self.user[other] == self.user[job_id]]
        places = sorted(self.place[other] for other in theirs)
        theirs.remove(job_id)
        self.waiting.remove(job_id)
        del self.place[job_id]
        for other, place in zip(sorted(theirs, key=self.arrival.__getitem__), places, strict=False):
            self.place[other] = place


def run_model(capacity: int, steps: list[tuple[object, ...]]) -> Trace:
    queue, trace, running = ModelQueue(), Trace(), []

    def hand_out() -> None:
        while queue.waiting and len(running) < capacity:
            job_id = queue.pop()
            running.append(job_id)
            trace.dispatched.append(job_id)

    for number, step in enumerate(steps):
        if step[0] == "arrive":
            _, user, community = step
            trace.arrive(f"j{number}", str(user), list(queue))
            queue.push(f"j{number}", user, community)
        elif step[0] == "finish" and running:
            running.pop(int(str(step[1])) % len(running))
        elif step[0] == "cancel" and queue.waiting:
            waiting = list(queue)
            job_id = waiting[int(str(step[1])) % len(waiting)]
            queue.remove(job_id)
            trace.cancelled.add(job_id)
        hand_out()
        trace.lines.append(list(queue))
    while running:
        running.pop(0)
        hand_out()
    return trace


async def run_line(line: Line, steps: list[tuple[object, ...]]) -> Trace:
    """The same steps against the database's line."""
    await line.reset()
    trace = Trace()
    trace.dispatched = line.dispatched
    for number, step in enumerate(steps):
        if step[0] == "arrive":
            _, user, community = step
            trace.arrive(f"j{number}", str(user), await line.waiting())
            await line.arrive(f"j{number}", user, community)
        elif step[0] == "finish" and line.running:
            await line.finish(line.running[int(str(step[1])) % len(line.running)])
        elif step[0] == "cancel" and (waiting := await line.waiting()):
            job_id = waiting[int(str(step[1])) % len(waiting)]
            await line.cancel(job_id)
            trace.cancelled.add(job_id)
        assert isinstance(line.capacity, int)
        assert await line.queue.in_flight() == len(line.running) <= line.capacity
        trace.lines.append(await line.waiting())
    await line.drain()
    return trace


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=SCENARIO)
def test_the_line_follows_the_rules(
    database_url: str, scenario: tuple[int, list[tuple[object, ...]]]
) -> None:
    capacity, steps = scenario

    async def run() -> Trace:
        db = Database(database_url)
        try:
            return await run_line(Line(db, capacity), steps)
        finally:
            await db.dispose()

    trace = asyncio.run(run())
    check_trace(trace)
    # Exactly the rules: the same line as the plain model at every step.
    model = run_model(capacity, steps)
    assert trace.lines == model.lines
    assert trace.dispatched == model.dispatched


def test_the_model_agrees_with_a_hand_worked_example() -> None:
    """The model itself, on the burst example worked out above by hand."""
    steps: list[tuple[object, ...]] = [("arrive", "A", None)] * 3 + [("arrive", "B", None)]
    assert run_model(1, steps).lines[-1] == ["j3", "j1", "j2"]
    assert run_model(1, steps).dispatched == ["j0", "j3", "j1", "j2"]
