"""Every word the charts show, written here as the replies' are in `bot/replies.py`, so that a
translation layer can wrap them in one place. Numbers on the axes are figures, not words: they
are formatted by the chart (`bot/charts/scale.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class StatsChartWording:
    """The labels of `/admin stats`'s chart."""

    title: str
    period: str
    days: tuple[str, ...]  # one label per day of the chart, oldest first
    jobs_panel: str
    succeeded: str
    failed: str
    other: str
    times_panel: str
    median: str
    p90: str
    credits_panel: str
    credits: str
    no_jobs: str
    no_times: str
    no_credits: str


def stats_chart_wording(
    days: Sequence[date], *, period_days: int, community: bool
) -> StatsChartWording:
    scope = "in this community" if community else "everywhere"
    first, last = days[0], days[-1]
    return StatsChartWording(
        title=f"Last {period_days} {'day' if period_days == 1 else 'days'} {scope}",
        period=f"{_long_day(first)} – {_long_day(last)} (UTC)",
        days=tuple(_day(day) for day in days),
        jobs_panel="Jobs per day",
        succeeded="Succeeded",
        failed="Failed",
        other="Cancelled or running",
        times_panel="Generation time per day (seconds)",
        median="Median",
        p90="90th percentile",
        credits_panel="Credits used per day",
        credits="Credits used",
        no_jobs="No jobs in this period",
        no_times="No finished jobs with a generation time",
        no_credits="No credits used",
    )


def _day(day: date) -> str:
    return f"{MONTHS[day.month - 1]} {day.day}"


def _long_day(day: date) -> str:
    return f"{_day(day)}, {day.year}"
