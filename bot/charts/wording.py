"""Every word the charts show, written here as the replies' are in `bot/replies.py`, through the
catalogues (`bot/i18n`); dates in the language's own form. Numbers on the axes are figures, not
words: they are formatted by the chart (`bot/charts/scale.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from bot.i18n import Translator, now


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
    days: Sequence[date], *, period_days: int, community: bool, tr: Translator | None = None
) -> StatsChartWording:
    """The labels in `tr`'s language (None: the language being written in)."""
    tr = tr or now()
    first, last = days[0], days[-1]
    title = (
        tr.ngettext(
            "Last {count} day in this community",
            "Last {count} days in this community",
            period_days,
        )
        if community
        else tr.ngettext("Last {count} day everywhere", "Last {count} days everywhere", period_days)
    )
    return StatsChartWording(
        title=title,
        period=tr.gettext(
            "{first} – {last} (UTC)",
            first=tr.date(first, "yMMMd"),
            last=tr.date(last, "yMMMd"),
        ),
        days=tuple(tr.date(day, "MMMd") for day in days),
        jobs_panel=tr.gettext("Jobs per day"),
        succeeded=tr.gettext("Succeeded"),
        failed=tr.gettext("Failed"),
        other=tr.gettext("Cancelled or running"),
        times_panel=tr.gettext("Generation time per day (seconds)"),
        median=tr.gettext("Median"),
        p90=tr.gettext("90th percentile"),
        credits_panel=tr.gettext("Credits used per day"),
        credits=tr.gettext("Credits used"),
        no_jobs=tr.gettext("No jobs in this period"),
        no_times=tr.gettext("No finished jobs with a generation time"),
        no_credits=tr.gettext("No credits used"),
    )
