"""Value axes: round ticks from zero up past the largest value, and their labels."""

from __future__ import annotations

import math

# Steps a reader can count in, per power of ten.
_STEPS = (1.0, 2.0, 2.5, 5.0, 10.0)


def ticks(largest: float, *, count: int = 4, whole: bool = False) -> list[float]:
    """About `count` equal, round steps from 0 to the first tick at or above `largest` (a
    chart of nothing still gets an axis). `whole`: the steps are whole numbers."""
    if largest <= 0:
        largest = 1.0
    rough = largest / count
    power = 10 ** math.floor(math.log10(rough))
    step = next(m * power for m in _STEPS if m * power >= rough * (1 - 1e-9))
    if whole:
        step = max(1.0, float(math.ceil(step)))
    steps = math.ceil(largest / step - 1e-9)
    return [round(n * step, 9) for n in range(steps + 1)]


def label(value: float) -> str:
    """2.5, 40, 1.5k, 25k, 1.2M: short, and as exact as round ticks need."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{round(value / size, 3):g}{suffix}"
    return f"{round(value, 6):g}"
