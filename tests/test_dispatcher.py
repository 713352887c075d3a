"""The dispatcher and its fair queue: the provider's capacity is never exceeded, and one user's
burst of jobs cannot hold everyone else up (round-robin across users, then communities)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.jobs.dispatcher import Dispatcher
from bot.jobs.fair_queue import FairQueue


async def settle() -> None:
    """Let every task that can run do so (woken acquirers, cancelled waiters)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Harness:
    """A dispatcher with one real task per job, recording the order slots are handed out."""

    def __init__(self, capacity: int) -> None:
        self.changes = 0
        self.dispatcher = Dispatcher(capacity, on_change=self._changed)
        self.dispatched: list[str] = []
        self.running: list[str] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def _changed(self) -> None:
        self.changes += 1

    async def _job(self, job_id: str, user: Hashable, community: Hashable) -> None:
        await self.dispatcher.acquire(job_id, user=user, community=community)
        self.dispatched.append(job_id)
        self.running.append(job_id)

    async def submit(self, job_id: str, user: Hashable, community: Hashable = None) -> None:
        self.tasks[job_id] = asyncio.create_task(self._job(job_id, user, community))
        await settle()

    async def finish(self, job_id: str) -> None:
        self.running.remove(job_id)
        self.dispatcher.release(job_id)
        await settle()

    async def drain(self) -> None:
        """Finish jobs, oldest first, until nothing runs or waits."""
        while self.running:
            await self.finish(self.running[0])
        assert self.dispatcher.waiting == []


# ---- the ordering ---------------------------------------------------------------------------


async def test_a_burst_from_one_user_does_not_hold_up_the_others() -> None:
    harness = Harness(capacity=1)
    burst = [f"a{i}" for i in range(1, 11)]
    for job_id in burst:
        await harness.submit(job_id, "A", "guild")
    await harness.submit("b1", "B", "guild")
    await harness.submit("c1", "C", "guild")

    assert harness.dispatched == ["a1"]
    assert harness.dispatcher.waiting == ["b1", "c1", *burst[1:]]
    await harness.drain()
    assert harness.dispatched == ["a1", "b1", "c1", *burst[1:]]


async def test_each_user_gets_one_job_per_round() -> None:
    harness = Harness(capacity=1)
    await harness.submit("z", "Z", "guild")  # holds the only slot
    for job_id, user in [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("b2", "B")]:
        await harness.submit(job_id, user, "guild")
    await harness.submit("c1", "C", "guild")

    assert harness.dispatcher.waiting == ["a1", "b1", "c1", "a2", "b2", "a3"]
    await harness.drain()
    assert harness.dispatched == ["z", "a1", "b1", "c1", "a2", "b2", "a3"]


async def test_communities_take_turns_within_a_round() -> None:
    harness = Harness(capacity=1)
    await harness.submit("z", "Z", "elsewhere")
    for job_id, user in [("a", "A"), ("b", "B"), ("c", "C")]:
        await harness.submit(job_id, user, "busy-server")
    await harness.submit("d", "D", "quiet-server")
    await harness.submit("e", "E", None)  # a DM: the DMs take their turn as one community

    assert harness.dispatcher.waiting == ["a", "d", "e", "b", "c"]
    await harness.drain()
    assert harness.dispatched == ["z", "a", "d", "e", "b", "c"]


async def test_positions_follow_the_dispatch_order_and_changes_are_announced() -> None:
    harness = Harness(capacity=1)
    dispatcher = harness.dispatcher
    await harness.submit("z", "Z")
    assert harness.changes == 0  # straight through: nobody's place changed

    await harness.submit("a1", "A")
    await harness.submit("a2", "A")
    assert harness.changes == 2
    assert dispatcher.waiting == ["a1", "a2"]

    await harness.submit("b1", "B")  # a newcomer goes ahead of A's second job
    assert harness.changes == 3
    assert dispatcher.waiting == ["a1", "b1", "a2"]
    assert dispatcher.waiting_count == 3
    assert [dispatcher.position(job_id) for job_id in ("a1", "b1", "a2")] == [1, 2, 3]
    assert dispatcher.position("z") is None  # running, not waiting
    assert dispatcher.position("unknown") is None

    expected = dispatcher.waiting
    await harness.finish("z")
    assert harness.changes == 4
    assert dispatcher.waiting == ["b1", "a2"]
    assert dispatcher.position("b1") == 1

    await harness.drain()
    assert harness.dispatched == ["z", *expected]
    changes = harness.changes
    dispatcher.release("z")  # already released: nothing happens
    dispatcher.release("never-seen")
    assert harness.changes == changes
    assert dispatcher.in_flight == 0


async def test_a_users_next_job_after_an_idle_spell_takes_the_next_round() -> None:
    harness = Harness(capacity=1)
    await harness.submit("a1", "A")
    await harness.finish("a1")
    await harness.submit("a2", "A")  # straight through again (round 1)
    await harness.submit("a3", "A")  # round 2
    await harness.submit("b1", "B")  # round 1: ahead of a3
    assert harness.dispatcher.waiting == ["b1", "a3"]


# ---- capacity, claims, cancellation ---------------------------------------------------------


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Dispatcher(capacity)


async def test_capacity_is_shared_out_and_never_exceeded() -> None:
    harness = Harness(capacity=2)
    for job_id in ("a1", "a2", "a3", "b1"):
        await harness.submit(job_id, job_id[0].upper())
    assert harness.dispatched == ["a1", "a2"]
    assert harness.dispatcher.in_flight == 2
    assert harness.dispatcher.waiting == ["b1", "a3"]
    await harness.finish("a1")
    assert harness.dispatched == ["a1", "a2", "b1"]
    assert harness.dispatcher.in_flight == 2


async def test_claimed_jobs_count_against_capacity() -> None:
    harness = Harness(capacity=1)
    harness.dispatcher.claim("resumed")
    assert harness.dispatcher.in_flight == 1
    await harness.submit("a1", "A")
    assert harness.dispatched == []
    assert harness.dispatcher.waiting == ["a1"]

    await harness.dispatcher.acquire("resumed", user="R")  # already at the provider
    assert harness.dispatcher.in_flight == 1

    harness.dispatcher.release("resumed")
    await settle()
    assert harness.dispatched == ["a1"]
    assert harness.dispatcher.in_flight == 1


async def test_a_job_cannot_wait_twice() -> None:
    harness = Harness(capacity=1)
    await harness.submit("z", "Z")
    await harness.submit("a1", "A")
    with pytest.raises(ValueError, match="already waiting"):
        await harness.dispatcher.acquire("a1", user="A")
    await harness.drain()
    assert harness.dispatched == ["z", "a1"]


async def test_cancelling_a_waiting_job_takes_it_out_of_the_line() -> None:
    harness = Harness(capacity=1)
    await harness.submit("z", "Z")
    await harness.submit("a1", "A")
    await harness.submit("b1", "B")
    changes = harness.changes

    harness.tasks["a1"].cancel()
    await settle()
    assert harness.tasks["a1"].cancelled()
    assert harness.dispatcher.waiting == ["b1"]
    assert harness.dispatcher.position("a1") is None
    assert harness.changes == changes + 1
    assert harness.dispatcher.in_flight == 1

    await harness.drain()
    assert harness.dispatched == ["z", "b1"]
    assert harness.dispatcher.in_flight == 0


async def test_cancelled_as_the_slot_is_handed_over_gives_the_slot_back() -> None:
    harness = Harness(capacity=1)
    await harness.submit("z", "Z")
    await harness.submit("a1", "A")

    harness.dispatcher.release("z")  # hands the slot to a1 ...
    harness.running.remove("z")
    harness.tasks["a1"].cancel()  # ... which is cancelled before it could run
    await settle()
    assert harness.tasks["a1"].cancelled()
    assert harness.dispatcher.in_flight == 0

    await harness.submit("b1", "B")
    assert harness.dispatched == ["z", "b1"]  # the slot is usable again


async def test_a_job_cancelled_just_before_release_is_skipped() -> None:
    harness = Harness(capacity=1)
    await harness.submit("z", "Z")
    await harness.submit("a1", "A")
    await harness.submit("b1", "B")

    harness.tasks["a1"].cancel()  # its task has not run its clean-up yet ...
    await harness.finish("z")  # ... when the slot frees up: it goes to the next one
    assert harness.tasks["a1"].cancelled()
    assert harness.dispatched == ["z", "b1"]
    assert harness.dispatcher.in_flight == 1
    assert harness.dispatcher.waiting == []


# ---- the fair queue on its own ----------------------------------------------------------------


def test_queue_basics() -> None:
    queue = FairQueue()
    assert len(queue) == 0
    assert list(queue) == []
    with pytest.raises(IndexError):
        queue.first()
    queue.push("a1", "A")
    queue.push("b1", "B", "guild")
    assert "a1" in queue
    assert "zz" not in queue
    with pytest.raises(ValueError, match="already waiting"):
        queue.push("a1", "A")
    assert queue.remove("zz") is False
    assert queue.first() == "a1"
    assert queue.pop() == "a1"
    assert queue.position("a1") is None
    assert queue.position("b1") == 1
    assert len(queue) == 1


def test_removing_a_job_moves_its_users_later_jobs_up() -> None:
    queue = FairQueue()
    for job_id in ("a1", "a2", "a3"):
        queue.push(job_id, "A")
    queue.remove("a1")
    queue.push("b1", "B")
    # a2 and a3 took the rounds a1 and a2 had: B's first job comes after A's first one only.
    assert list(queue) == ["a2", "b1", "a3"]


def test_removing_a_users_latest_job_frees_its_round() -> None:
    queue = FairQueue()
    for job_id, user in [("a1", "A"), ("a2", "A"), ("b1", "B"), ("b2", "B"), ("b3", "B")]:
        queue.push(job_id, user)
    queue.remove("a2")
    queue.push("a3", "A")  # back into the round a2 left, not behind B's whole burst
    assert list(queue) == ["a1", "b1", "b2", "a3", "b3"]


def test_bookkeeping_for_finished_rounds_is_dropped() -> None:
    queue = FairQueue()
    for i in range(3000):
        queue.push(f"r{i}", "regular", "guild")
        queue.push(f"o{i}", f"one-off-{i}", f"guild-{i % 13}")
        queue.pop()
        queue.pop()
    assert len(queue) == 0
    assert queue.current_round > 1000
    assert len(queue._dispatched_round) <= 3
    assert len(queue._dispatched_in) <= 2
    assert len(queue._slots) <= 2


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
SCENARIO = st.tuples(st.integers(1, 3), st.lists(STEP, min_size=20, max_size=80))


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

    def __len__(self) -> int:
        return len(self.waiting)

    def first(self) -> str:
        return next(iter(self))

    def position(self, job_id: str) -> int | None:
        return list(self).index(job_id) + 1 if job_id in self.waiting else None

    def pop(self) -> str:
        job_id = self.first()
        self.waiting.remove(job_id)
        self.current_round = self.place[job_id][0]
        return job_id

    def remove(self, job_id: str) -> bool:
        if job_id not in self.waiting:
            return False
        # The user's remaining jobs, oldest first, take the user's places, earliest first.
        theirs = [other for other in self.waiting if self.user[other] == self.user[job_id]]
        places = sorted(self.place[other] for other in theirs)
        theirs.remove(job_id)
        self.waiting.remove(job_id)
        del self.place[job_id]
        for other, place in zip(sorted(theirs, key=self.arrival.__getitem__), places, strict=False):
            self.place[other] = place
        return True


def run_queue(
    capacity: int, steps: list[tuple[object, ...]], queue: FairQueue | ModelQueue | None = None
) -> Trace:
    """The dispatcher's hand-out logic over a bare queue, step by step."""
    queue = FairQueue() if queue is None else queue
    trace = Trace()
    running: list[str] = []

    def dispatch_next() -> None:
        expected = queue.first()
        assert next(iter(queue)) == expected
        job_id = queue.pop()
        assert job_id == expected
        running.append(job_id)
        trace.dispatched.append(job_id)

    for number, step in enumerate(steps):
        if step[0] == "arrive":
            _, user, community = step
            job_id = f"j{number}"
            trace.arrive(job_id, str(user), list(queue))
            free = not queue and len(running) < capacity
            queue.push(job_id, user, community)
            if free:
                dispatch_next()
        elif step[0] == "finish" and running:
            running.pop(int(str(step[1])) % len(running))
        elif step[0] == "cancel" and queue:
            waiting = list(queue)
            job_id = waiting[int(str(step[1])) % len(waiting)]
            assert queue.remove(job_id)
            trace.cancelled.add(job_id)
        while queue and len(running) < capacity:
            dispatch_next()
        assert len(running) <= capacity
        waiting = list(queue)
        assert len(queue) == len(waiting)
        assert [queue.position(job_id) for job_id in waiting] == list(range(1, len(waiting) + 1))
        trace.lines.append(waiting)

    while running:
        running.pop(0)
        while queue and len(running) < capacity:
            dispatch_next()
    assert len(queue) == 0
    return trace


async def run_dispatcher(capacity: int, steps: list[tuple[object, ...]]) -> Trace:
    """The same steps against the real dispatcher, one acquiring task per job."""
    harness = Harness(capacity)
    dispatcher = harness.dispatcher
    trace = Trace()
    trace.dispatched = harness.dispatched  # recorded by the tasks as they get their slot

    for number, step in enumerate(steps):
        before, changes = dispatcher.waiting, harness.changes
        if step[0] == "arrive":
            _, user, community = step
            job_id = f"j{number}"
            trace.arrive(job_id, str(user), dispatcher.waiting)
            await harness.submit(job_id, str(user), community)
        elif step[0] == "finish" and harness.running:
            await harness.finish(harness.running[int(str(step[1])) % len(harness.running)])
        elif step[0] == "cancel" and dispatcher.waiting_count:
            job_id = before[int(str(step[1])) % len(before)]
            harness.tasks[job_id].cancel()
            await settle()
            trace.cancelled.add(job_id)
        waiting = dispatcher.waiting
        assert dispatcher.in_flight == len(harness.running) <= capacity
        assert dispatcher.waiting_count == sum(not task.done() for task in harness.tasks.values())
        assert [dispatcher.position(job_id) for job_id in waiting] == list(
            range(1, len(waiting) + 1)
        )
        if waiting != before:
            assert harness.changes > changes, "the waiting line changed unannounced"

    await harness.drain()
    assert dispatcher.in_flight == 0
    assert all(task.done() for task in harness.tasks.values())
    return trace


@given(SCENARIO)
@settings(max_examples=300)
def test_fair_queue_properties(scenario: tuple[int, list[tuple[object, ...]]]) -> None:
    capacity, steps = scenario
    trace = run_queue(capacity, steps)
    check_trace(trace)
    # Exactly the rules: the same line as the plain model at every step.
    model = run_queue(capacity, steps, ModelQueue())
    assert trace.lines == model.lines
    assert trace.dispatched == model.dispatched


@given(SCENARIO)
@settings(max_examples=60)
def test_dispatcher_properties(scenario: tuple[int, list[tuple[object, ...]]]) -> None:
    capacity, steps = scenario
    trace = asyncio.run(run_dispatcher(capacity, steps))
    check_trace(trace)
    # The dispatcher hands out slots exactly as its queue orders them.
    assert trace.dispatched == run_queue(capacity, steps).dispatched
