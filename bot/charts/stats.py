"""`/admin stats`'s chart: three panels over the same days. Jobs by outcome (stacked bars), the
median and 90th percentile generation time (lines over the band between them), and the credits
used (bars). Pure drawing: the figures and the words come in, PNG bytes go out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.charts.canvas import Canvas
from bot.charts.scale import label, ticks
from bot.charts.wording import StatsChartWording
from storage.records import DayFigures

WIDTH, HEIGHT = 1000, 750

BACKGROUND = "#ffffff"
INK = "#1f2933"
MUTED = "#616e7c"
GRID = "#e4e7eb"
BASELINE = "#9aa5b1"
SUCCEEDED = "#2f9e6e"
FAILED = "#d64545"
OTHER = "#b8c2cc"
MEDIAN = "#2f6fde"
P90 = "#f0902e"
BAND = "#e4ecfb"
CREDITS = "#7459d9"

MARGIN = 28
TITLE_SIZE, PERIOD_SIZE = 24, 15
PANEL_SIZE, LEGEND_SIZE, TICK_SIZE, VALUE_SIZE, NOTE_SIZE = 17, 14, 13, 12, 15
MIN_LEGEND_SIZE = 11
PANELS_TOP = 96
PANEL_GAP = 16
HEADER = 34  # from a panel's top to its plot's
DAY_LABELS = 26  # from a plot's bottom to its panel's
PANEL_HEIGHT = (HEIGHT - PANELS_TOP - MARGIN / 2 - 2 * PANEL_GAP) / 3
# Room above the tallest bar for its figure.
HEADROOM = 1.1
# Up to this many days, bars carry their figure and lines their dots.
FIGURES_UP_TO = 16
DOTS_UP_TO = 45
# Past this many days, lines are drawn thinner: they are mostly steep.
THICK_LINES_UP_TO = 60
WEEK = 7


@dataclass(frozen=True)
class Plot:
    """A panel's plotting area and its value axis; days are equal slots from left to right."""

    left: float
    top: float
    right: float
    bottom: float
    ticks: list[float]
    days: int

    @property
    def slot(self) -> float:
        return (self.right - self.left) / self.days

    @property
    def bar_width(self) -> float:
        return max(1.0, min(self.slot * 0.68, 56.0))

    def x(self, day: int) -> float:
        return self.left + (day + 0.5) * self.slot

    def y(self, value: float) -> float:
        return self.bottom - value / self.ticks[-1] * (self.bottom - self.top)


@dataclass(frozen=True)
class LegendItem:
    colour: str
    text: str
    line: bool = False


Panel = Callable[[Canvas, Plot, Sequence[DayFigures], StatsChartWording], None]


def render_stats_chart(figures: Sequence[DayFigures], wording: StatsChartWording) -> bytes:
    """The chart as PNG bytes, WIDTH × HEIGHT. `figures` are consecutive days, oldest first,
    one label each in `wording.days`."""
    if not figures or len(figures) != len(wording.days):
        raise ValueError("one label per day, and at least one day")
    canvas = Canvas(WIDTH, HEIGHT, BACKGROUND)
    times = [t for day in figures for t in (day.median_generation_seconds, _p90(day)) if t]
    panels: list[tuple[Panel, list[float]]] = [
        (_jobs, ticks(max(day.jobs for day in figures) * HEADROOM, whole=True)),
        (_times, ticks(max(times) * HEADROOM) if times else ticks(0, whole=True)),
        (_credits, ticks(max(day.credits_used for day in figures) * HEADROOM, whole=True)),
    ]
    widest = max(
        canvas.text_width(label(tick), size=TICK_SIZE) for _, axis in panels for tick in axis
    )
    # Whole pixels: the plots stay put while the widest tick label keeps its width.
    left, right = round(MARGIN + widest + 12), WIDTH - MARGIN

    canvas.text((MARGIN, 22), wording.title, size=TITLE_SIZE, fill=INK, bold=True)
    canvas.text((MARGIN, 58), wording.period, size=PERIOD_SIZE, fill=MUTED)
    for index, (draw, axis) in enumerate(panels):
        top = panel_top(index)
        plot = Plot(left, top + HEADER, right, top + PANEL_HEIGHT - DAY_LABELS, axis, len(figures))
        _value_axis(canvas, plot)
        draw(canvas, plot, figures, wording)
        canvas.line([(plot.left, plot.bottom), (plot.right, plot.bottom)], BASELINE, 1.5)
        _day_labels(canvas, plot, wording.days)
    return canvas.png()


def panel_top(index: int) -> float:
    """Where the panel `index` (0: jobs, 1: generation time, 2: credits) starts."""
    return PANELS_TOP + index * (PANEL_HEIGHT + PANEL_GAP)


# ---- the panels -----------------------------------------------------------------------------


def _jobs(
    canvas: Canvas, plot: Plot, figures: Sequence[DayFigures], wording: StatsChartWording
) -> None:
    _header(
        canvas,
        plot,
        wording.jobs_panel,
        [
            LegendItem(SUCCEEDED, wording.succeeded),
            LegendItem(FAILED, wording.failed),
            LegendItem(OTHER, wording.other),
        ],
    )
    for index, day in enumerate(figures):
        base = 0
        for count, colour in (
            (day.succeeded, SUCCEEDED),
            (day.failed, FAILED),
            (day.other, OTHER),
        ):
            if count:
                _bar(canvas, plot, index, base, base + count, colour)
            base += count
        _bar_figure(canvas, plot, index, day.jobs)
    if not any(day.jobs for day in figures):
        _note(canvas, plot, wording.no_jobs)


def _times(
    canvas: Canvas, plot: Plot, figures: Sequence[DayFigures], wording: StatsChartWording
) -> None:
    _header(
        canvas,
        plot,
        wording.times_panel,
        [LegendItem(MEDIAN, wording.median, line=True), LegendItem(P90, wording.p90, line=True)],
    )
    runs = _runs([day.median_generation_seconds is not None for day in figures])
    for run in runs:
        medians = [(plot.x(i), plot.y(_median(figures[i]))) for i in run]
        p90s = [(plot.x(i), plot.y(_p90(figures[i]) or 0.0)) for i in run]
        if len(run) > 1:
            canvas.polygon([*p90s, *reversed(medians)], BAND)
        else:  # one day on its own: its spread as a short bar
            canvas.line([p90s[0], medians[0]], BAND, 6)
    for run in runs:
        thin = plot.days > THICK_LINES_UP_TO
        for colour, value, width in ((P90, _p90, 2.0), (MEDIAN, _median, 2.5)):
            width = width * 0.6 if thin else width
            points = [(plot.x(i), plot.y(value(figures[i]) or 0.0)) for i in run]
            if len(points) > 1:
                canvas.line(points, colour, width)
            if len(points) == 1 or plot.days <= DOTS_UP_TO:
                for point in points:
                    canvas.dot(point, 3.5, colour, ring=BACKGROUND)
    if not runs:
        _note(canvas, plot, wording.no_times)


def _credits(
    canvas: Canvas, plot: Plot, figures: Sequence[DayFigures], wording: StatsChartWording
) -> None:
    _header(canvas, plot, wording.credits_panel, [LegendItem(CREDITS, wording.credits)])
    for index, day in enumerate(figures):
        if day.credits_used > 0:
            _bar(canvas, plot, index, 0, day.credits_used, CREDITS)
            _bar_figure(canvas, plot, index, day.credits_used)
    if not any(day.credits_used > 0 for day in figures):
        _note(canvas, plot, wording.no_credits)


# ---- parts ----------------------------------------------------------------------------------


def _header(canvas: Canvas, plot: Plot, title: str, legend: Sequence[LegendItem]) -> None:
    middle = plot.top - HEADER + 12
    canvas.text((MARGIN, middle), title, size=PANEL_SIZE, fill=INK, bold=True, anchor="lm")
    title_end = MARGIN + canvas.text_width(title, size=PANEL_SIZE, bold=True)
    swatch, gap, space = 12.0, 6.0, 20.0
    # Long (translated) labels get smaller type rather than run into the panel's title.
    for size in range(LEGEND_SIZE, MIN_LEGEND_SIZE - 1, -1):
        widths = [swatch + gap + canvas.text_width(item.text, size=size) for item in legend]
        x = plot.right - sum(widths) - space * (len(legend) - 1)
        if x >= title_end + space:
            break
    for item, width in zip(legend, widths, strict=True):
        if item.line:
            canvas.line([(x - 3, middle), (x + swatch + 3, middle)], item.colour, 2.5)
            canvas.dot((x + swatch / 2, middle), 3.5, item.colour, ring=BACKGROUND)
        else:
            half = swatch / 2
            canvas.rounded(x, middle - half, x + swatch, middle + half, 2, item.colour)
        canvas.text((x + swatch + gap, middle), item.text, size=size, fill=MUTED, anchor="lm")
        x += width + space


def _value_axis(canvas: Canvas, plot: Plot) -> None:
    for tick in plot.ticks:
        y = plot.y(tick)
        if tick:
            canvas.line([(plot.left, y), (plot.right, y)], GRID, 1)
        canvas.text((plot.left - 10, y), label(tick), size=TICK_SIZE, fill=MUTED, anchor="rm")


def _day_labels(canvas: Canvas, plot: Plot, days: Sequence[str]) -> None:
    """As many day labels as fit side by side, counted back from the last day (today)."""
    widest = max(canvas.text_width(day, size=TICK_SIZE) for day in days)
    every = max(1, int((widest + 14) // plot.slot) + 1)
    if every > WEEK:  # whole weeks apart, so that the labels fall on the same weekday
        every = -(-every // WEEK) * WEEK
    for index in range(len(days) - 1, -1, -every):
        x = plot.x(index)
        canvas.line([(x, plot.bottom), (x, plot.bottom + 4)], BASELINE, 1)
        canvas.text((x, plot.bottom + 7), days[index], size=TICK_SIZE, fill=MUTED, anchor="mt")


def _bar(canvas: Canvas, plot: Plot, day: int, low: float, high: float, colour: str) -> None:
    x, half = plot.x(day), plot.bar_width / 2
    canvas.rectangle(x - half, plot.y(high), x + half, plot.y(low), colour)


def _bar_figure(canvas: Canvas, plot: Plot, day: int, value: int) -> None:
    """The bar's figure above it, where there are few enough days for it to fit."""
    text = label(value)
    if not value or plot.days > FIGURES_UP_TO:
        return
    if canvas.text_width(text, size=VALUE_SIZE) > plot.slot - 4:
        return
    canvas.text((plot.x(day), plot.y(value) - 4), text, size=VALUE_SIZE, fill=INK, anchor="mb")


def _note(canvas: Canvas, plot: Plot, text: str) -> None:
    centre = ((plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2)
    canvas.text(centre, text, size=NOTE_SIZE, fill=MUTED, anchor="mm")


def _runs(present: Sequence[bool]) -> list[list[int]]:
    """The stretches of consecutive days that have a value: each is drawn as one line."""
    runs: list[list[int]] = []
    for index, here in enumerate(present):
        if not here:
            continue
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def _median(day: DayFigures) -> float:
    return day.median_generation_seconds or 0.0


def _p90(day: DayFigures) -> float | None:
    return day.p90_generation_seconds
