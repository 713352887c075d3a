"""The garbage collector, tuned for bursts once the service has started.

Nearly everything a request makes is freed by reference counting the moment it is done with;
the cyclic collector only finds the rest. Its full (generation-2) passes walk every object
that survived, which at start-up is every module, class and compiled statement, and one pass
in a burst stalls every interaction waiting behind it. So, once the service has started:

- what start-up made is frozen: moved out of the collector's sight for good;
- young collections run every YOUNG_THRESHOLD net allocations instead of 700, a tenth as
  often (each walks only the young objects, so the work per object is the same);
- a full pass waits for FULL_AFTER middle-aged passes instead of 10.

Measured with `bench/throughput.py` (full_gc: the full passes counted during the run).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 7_000
MIDDLE_THRESHOLD = 10
FULL_AFTER = 100


def settle_after_start_up() -> None:
    gc.collect()  # start-up's own garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, FULL_AFTER)


def undo_settling() -> None:
    """Back to the interpreter's defaults (benchmarks that start several services in turn)."""
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
