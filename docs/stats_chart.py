"""Draws docs/stats-chart.png, the README's picture of `/admin stats`'s chart, with the bot's own
renderer, from two weeks of sample figures of a busy community: quieter weekends, and one
afternoon the provider slowed down and failed jobs.

    .venv/bin/python docs/stats_chart.py
"""

from __future__ import annotations

import asyncio
import random
from datetime import date, timedelta
from pathlib import Path

from bot.charts import stats_chart
from storage.records import DayFigures

OUT = Path(__file__).with_name("stats-chart.png")
LAST_DAY = date(2026, 11, 21)
DAYS = 15  # /admin stats 14: fourteen days back, and today so far
INCIDENT = 9  # the day the provider struggled


def sample_days(seed: int = 18) -> list[DayFigures]:
    rng = random.Random(seed)
    days = []
    for n in range(DAYS):
        day = LAST_DAY - timedelta(days=DAYS - 1 - n)
        busy = 0.55 if day.weekday() >= 5 else 1.0
        share = 0.4 if n == 0 else 0.6 if n == DAYS - 1 else 1.0  # partial first and last days
        jobs = round(rng.gauss(42, 6) * busy * share)
        failed = rng.randint(9, 14) if n == INCIDENT else rng.randint(0, 2)
        other = rng.randint(0, 2) + (3 if n == DAYS - 1 else 0)  # today: some still running
        succeeded = max(0, jobs - failed - other)
        median = rng.uniform(17, 22) * (1.6 if n == INCIDENT else 1.0)
        p90 = median * rng.uniform(1.45, 1.8) * (1.3 if n == INCIDENT else 1.0)
        # Most jobs ask for one image, some for two; refunds are rare.
        credits = succeeded + rng.randint(succeeded // 5, succeeded // 3) - rng.randint(0, 1)
        days.append(DayFigures(day, succeeded, failed, other, max(0, credits), median, p90))
    return days


async def main() -> None:
    chart = await stats_chart(sample_days(), period_days=DAYS - 1, community=True)
    assert chart is not None
    OUT.write_bytes(chart.png)
    print(OUT)


if __name__ == "__main__":
    asyncio.run(main())
