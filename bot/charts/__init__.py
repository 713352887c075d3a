"""Charts for people who would rather look than read, drawn with Pillow alone: the service
process never imports numpy or matplotlib (they slow its event loop)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot.charts.stats import HEIGHT, WIDTH, render_stats_chart
from bot.charts.thread import in_chart_thread
from bot.charts.wording import stats_chart_wording
from bot.i18n import Translator
from bot.ui import Chart
from storage.records import DayFigures

__all__ = ["STATS_CHART_NAME", "STATS_CHART_SIZE", "stats_chart"]

log = logging.getLogger(__name__)

STATS_CHART_NAME = "stats.png"
STATS_CHART_SIZE = (WIDTH, HEIGHT)


async def stats_chart(
    figures: Sequence[DayFigures],
    *,
    period_days: int,
    community: bool,
    tr: Translator | None = None,
) -> Chart | None:
    """`/admin stats`'s chart of these days, in `tr`'s language (None: the one being written
    in), drawn in the chart thread; None (and the reason in the log) if it could not be drawn:
    the figures in words still stand."""
    wording = stats_chart_wording(
        [day.day for day in figures], period_days=period_days, community=community, tr=tr
    )
    try:
        png = await in_chart_thread(render_stats_chart, tuple(figures), wording)
    except Exception:
        log.exception("the stats chart could not be drawn")
        return None
    return Chart(STATS_CHART_NAME, png)
