"""The order in which waiting jobs reach the provider: round-robin across users, then communities.

A plain first-come-first-served line lets one person who submits ten jobs make everyone who
arrives after them wait for all ten. Instead every job is put in a *round*: a user's first
waiting job goes in the current round, their next one in the round after, and so on, so each
user gets one job per round. Within a round, communities take turns in the same way (a job gets
*slot* k if it is its community's k-th job in that round), so a busy server cannot crowd out a
quiet one or the DMs. Within one user, jobs keep their arrival order.

The rules, exactly (the fairness bound below depends on them):

* ``current_round`` is the round of the job dispatched most recently (0 at the start). It never
  goes down: every waiting job's round is at least ``current_round``.
* A new job of user ``u`` gets round ``max(current_round, last + 1)``, where ``last`` is the round
  of ``u``'s latest job still waiting or already dispatched (``current_round`` if ``u`` has none).
* Its slot is 1 + the number of jobs already given that round and community.
* Waiting jobs are dispatched in ``(round, slot, arrival)`` order: that triple is a job's *place*.

So a user's jobs have strictly increasing rounds, and a user with ``a`` jobs waiting puts a new
job at most ``a + 1`` rounds past ``current_round``. Every job dispatched while it waits comes
from a round between the two, one per user per round: any other single user gets at most
``a + 2`` jobs through in the meantime, however many they have queued.

A cancelled job gives its place to its user's next waiting job, that one's place to the next, and
so on: the user's later jobs move up and the user's last place is given up. Nobody else's place
changes, and the user's places stay as the rules made them, so the bound holds after cancellations
too. (Passing places along, rather than placing the later jobs again, keeps each cancellation
O(n) even when a shutdown cancels thousands of one user's jobs.)

Bookkeeping for rounds that are over (before ``current_round``) is dropped: it could not change
where any later job goes, and keeping it would grow without bound in a long-running service.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Hashable, Iterator

# A place in the line: (round, slot, sequence). The sequence is unique, so places never tie.
_Place = tuple[int, int, int]


class _Line:
    """One user's waiting jobs in arrival order, and the places they hold in the same order."""

    __slots__ = ("jobs", "places")

    def __init__(self) -> None:
        self.jobs: list[str] = []
        self.places: list[_Place] = []  # strictly increasing: the user's rounds increase


class FairQueue:
    """Waiting jobs in dispatch order; ``pop`` takes the next one and marks it dispatched."""

    def __init__(self) -> None:
        self.current_round = 0
        self._order: list[_Place] = []  # every waiting job's place, sorted: the dispatch order
        self._owner: dict[int, Hashable] = {}  # place sequence -> user holding that place
        self._lines: dict[Hashable, _Line] = {}  # users with waiting jobs
        self._user_of: dict[str, Hashable] = {}  # waiting job -> its user
        self._dispatched_round: dict[Hashable, int] = {}  # user -> round of their last dispatch
        self._dispatched_in: dict[int, list[Hashable]] = {}  # round -> users dispatched in it
        self._slots: dict[int, dict[Hashable, int]] = {}  # round -> community -> places given
        self._pruned_below = 0
        self._sequence = 0

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._user_of

    def __iter__(self) -> Iterator[str]:
        """Waiting job ids in dispatch order (a snapshot: the queue may change meanwhile)."""
        # Walking the places in order meets each user's places in order too, so the n-th place
        # of a user met is held by that user's n-th job.
        met: dict[Hashable, int] = {}
        ids: list[str] = []
        for place in self._order:
            user = self._owner[place[2]]
            index = met.get(user, 0)
            met[user] = index + 1
            ids.append(self._lines[user].jobs[index])
        return iter(ids)

    def position(self, job_id: str) -> int | None:
        """1-based place in the dispatch order, or None if the job is not waiting."""
        if job_id not in self._user_of:
            return None
        line = self._lines[self._user_of[job_id]]
        return bisect_left(self._order, line.places[line.jobs.index(job_id)]) + 1

    def first(self) -> str:
        """The job ``pop`` would dispatch next; IndexError if nothing waits."""
        place = self._order[0]
        return self._lines[self._owner[place[2]]].jobs[0]

    def push(self, job_id: str, user: Hashable, community: Hashable = None) -> None:
        """Start a job waiting. ``community`` None (direct messages) is a community of its own."""
        if job_id in self._user_of:
            raise ValueError(f"job {job_id!r} is already waiting")
        round_ = self._next_round(self._last_round(user))
        place = (round_, self._take_slot(round_, community), self._sequence)
        self._sequence += 1
        insort(self._order, place)
        self._owner[place[2]] = user
        line = self._lines.setdefault(user, _Line())
        line.jobs.append(job_id)
        line.places.append(place)
        self._user_of[job_id] = user

    def pop(self) -> str:
        """Dispatch the next job: remove it and move ``current_round`` to its round."""
        place = self._order.pop(0)
        user = self._owner.pop(place[2])
        line = self._lines[user]
        # The first place overall is its user's first place, held by the user's oldest job.
        assert line.places[0] == place
        del line.places[0]
        job_id = line.jobs.pop(0)
        if not line.jobs:
            del self._lines[user]
        del self._user_of[job_id]
        round_ = place[0]
        self._dispatched_round[user] = round_
        self._dispatched_in.setdefault(round_, []).append(user)
        self._advance(round_)
        return job_id

    def remove(self, job_id: str) -> bool:
        """Take a waiting job out without dispatching it; False if it was not waiting.

        Its user's later jobs each move up into the place of the one before them, and the
        user's last place is given up.
        """
        if job_id not in self._user_of:
            return False
        user = self._user_of.pop(job_id)
        line = self._lines[user]
        line.jobs.remove(job_id)
        place = line.places.pop()
        del self._order[bisect_left(self._order, place)]
        del self._owner[place[2]]
        if not line.jobs:
            del self._lines[user]
        return True

    # ---- rounds ---------------------------------------------------------------------------

    def _last_round(self, user: Hashable) -> int | None:
        line = self._lines.get(user)
        if line is not None:
            return line.places[-1][0]
        return self._dispatched_round.get(user)

    def _next_round(self, last: int | None) -> int:
        if last is None:
            return self.current_round
        return max(self.current_round, last + 1)

    def _take_slot(self, round_: int, community: Hashable) -> int:
        slots = self._slots.setdefault(round_, {})
        slot = slots.get(community, 0) + 1
        slots[community] = slot
        return slot

    def _advance(self, round_: int) -> None:
        """Make ``round_`` current and forget the rounds before it."""
        self.current_round = round_
        # Every waiting job's round is at most one past its user's previous job, so the current
        # round rises by at most one per dispatch and this loop is O(1) per call.
        while self._pruned_below < round_:
            old = self._pruned_below
            self._slots.pop(old, None)
            for user in self._dispatched_in.pop(old, ()):
                if self._dispatched_round.get(user) == old:
                    del self._dispatched_round[user]
            self._pruned_below += 1
