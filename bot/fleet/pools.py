"""How many jobs the generator takes at once, per operation: the dispatcher's slots.

ModelsLab's account cap is one pool for every operation. A GPU worker serves some operations:
the workers alive now serving the same ones make one pool, their capacities summed. A fallback
generator adds a pool for the operations the first one has no pool for (a job of an operation
no GPU worker serves goes to ModelsLab; one whose workers are all busy waits for them).
"""

from __future__ import annotations

from collections import defaultdict

from backends.base import Backend
from backends.fallback import FallbackBackend
from backends.local.backend import LocalBackend
from backends.params import Operation
from bot.config import Settings
from bot.fleet.backend import FleetBackend
from bot.jobs.dispatcher import CapacitySource
from storage.dispatch import Pool

EVERY_OPERATION = frozenset(str(operation) for operation in Operation)


def capacity_source(backend: Backend, settings: Settings) -> CapacitySource:
    """The generator's pools, read afresh at every dispatch pass."""

    async def source() -> list[Pool]:
        return await pools_of(backend, settings)

    return source


async def pools_of(backend: Backend, settings: Settings) -> list[Pool]:
    pools = await _pools(backend, settings)
    if isinstance(backend, FleetBackend):
        # The fleet alone: a job of an operation no worker serves, nor is expected back to
        # serve (see FleetBackend.expected_operations), would wait in line with no end. One
        # slot lets such jobs through one at a time, to fail at once ("no GPU worker serves …
        # right now") and be refunded. Under a fallback, they go there instead.
        unserved = EVERY_OPERATION - await backend.expected_operations()
        if unserved:
            pools.append(Pool(unserved, 1, to_refuse=True))
    return pools


async def _pools(backend: Backend, settings: Settings) -> list[Pool]:
    if isinstance(backend, FallbackBackend):
        first = await _pools(backend.primary, settings)
        covered = frozenset().union(*(_operations(pool) for pool in first))
        second = [
            Pool(_operations(pool) - covered, pool.slots)
            for pool in await _pools(backend.secondary, settings)
        ]
        return first + [pool for pool in second if pool.operations]
    if isinstance(backend, FleetBackend):
        slots: defaultdict[frozenset[str], int] = defaultdict(int)
        for worker in await backend.live_workers():
            slots[frozenset(worker.operations)] += worker.capacity
        return [Pool(operations, slots[operations]) for operations in sorted(slots, key=sorted)]
    if isinstance(backend, LocalBackend):
        operations = frozenset(str(operation) for operation in backend.config.operations)
        return [Pool(operations, backend.capacity)]
    return [Pool(None, settings.modelslab_max_queued)]


def _operations(pool: Pool) -> frozenset[str]:
    return EVERY_OPERATION if pool.operations is None else pool.operations
