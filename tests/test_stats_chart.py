"""`/admin stats`'s chart: its figures day by day on a real SQLite file and a real PostgreSQL,
the PNG drawn from them (its size, and pixels that follow the data), its fonts for every
language the labels will be translated into, and the thread it is drawn in."""

from __future__ import annotations

import dataclasses
import io
import logging
import statistics
import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from PIL import Image, ImageChops
from sqlalchemy import update

import storage.stats
from bot.charts import STATS_CHART_NAME, STATS_CHART_SIZE, stats_chart
from bot.charts.fonts import font_for, has_glyph
from bot.charts.stats import HEIGHT, PANEL_HEIGHT, WIDTH, panel_top, render_stats_chart
from bot.charts.thread import in_chart_thread
from bot.charts.wording import stats_chart_wording
from storage.accounts import AccountRepository
from storage.database import Database
from storage.jobs import JobRepository, NewJob
from storage.models import Job
from storage.records import AuditNote, DayFigures, JobState, OutputRecord, UserRecord
from storage.stats import StatsRepository

TODAY = date(2026, 11, 21)
SINCE = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
UNTIL = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


# ---- the figures, day by day --------------------------------------------------------------


class Jobs:
    """Jobs in given end states, created at given moments, through the real repositories."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.accounts = AccountRepository(db)
        self.jobs = JobRepository(db)

    async def job(
        self,
        job_id: str,
        user: UserRecord,
        community_id: int | None,
        created: datetime,
        *,
        end: JobState | None = JobState.SUCCEEDED,
        seconds: float | None = None,
        images: int = 1,
    ) -> None:
        new = NewJob(
            id=job_id,
            user=user.id,
            community=community_id,
            operation="headshot",
            params={},
            credits=images,
            selfie_key=None,
            pose_key=None,
            seed=1,
        )
        await self.jobs.create(new, daily_quota=100, today=TODAY)
        if end == JobState.SUCCEEDED:
            await self.jobs.transition(job_id, [JobState.QUEUED], JobState.REHOSTING)
            outputs = [
                OutputRecord(
                    job_id, n, f"{job_id}-{n}.jpg", f"t-{job_id}-{n}", "image/jpeg", 1, 1, 1
                )
                for n in range(images)
            ]
            await self.jobs.succeed(job_id, outputs, generation_time=seconds)
        elif end is not None:
            await self.jobs.fail(job_id, "boom", state=end)
        async with self.db.write() as conn:
            await conn.execute(update(Job).where(Job.id == job_id).values(created_at=created))


def _at(day: int, hour: int, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, micro, tzinfo=UTC)


async def _period(db: Database) -> tuple[int, int]:
    data = Jobs(db)
    alice = await data.accounts.user("test", "alice")
    bob = await data.accounts.user("test", "bob")
    here = await data.accounts.community("test", "here")
    there = await data.accounts.community("test", "there")
    await data.job("before", alice, here, _at(18, 14, 59), seconds=99.0)
    await data.job("18-a", alice, here, _at(18, 16), seconds=10.0)
    await data.job("18-b", bob, here, _at(18, 17), seconds=20.0, images=2)
    await data.job("18-fail", bob, here, _at(18, 18), end=JobState.FAILED)
    await data.job("20-midnight", alice, here, _at(20, 0), seconds=30.0)
    await data.job("20-last", alice, here, _at(20, 23, 59, 59, 999_999), seconds=40.0)
    await data.job("21-cancel", bob, here, _at(21, 7), end=JobState.CANCELLED)
    await data.job("21-queued", bob, here, _at(21, 8), end=None)
    await data.job("21-there", bob, there, _at(21, 8, 30), seconds=50.0)
    note = AuditNote(actor="test:mod", action="refund", community_id=here)
    assert await data.jobs.refund("20-last", audit=note) == 1
    return here, there


async def test_daily_figures_of_a_community_and_of_everything(db: Database) -> None:
    here, _ = await _period(db)
    stats = StatsRepository(db)

    days = await stats.daily(here, since=SINCE, until=UNTIL)
    assert days == [
        DayFigures(date(2026, 11, 18), 2, 1, 0, 3, 15.0, 19.0),
        DayFigures(date(2026, 11, 19)),  # a day without jobs is there, empty
        DayFigures(date(2026, 11, 20), 2, 0, 0, 1, 35.0, 39.0),  # one refunded
        DayFigures(date(2026, 11, 21), 0, 0, 2, 0, None, None),  # cancelled, still queued
    ]
    summary = await stats.summary(here, since=SINCE)
    assert sum(day.jobs for day in days) == summary.jobs
    assert sum(day.succeeded for day in days) == summary.succeeded
    assert sum(day.failed for day in days) == summary.failed
    assert sum(day.credits_used for day in days) == summary.credits_used

    everywhere = await stats.daily(None, since=SINCE, until=UNTIL)
    assert everywhere[:3] == days[:3]
    assert everywhere[3] == DayFigures(date(2026, 11, 21), 1, 0, 2, 1, 50.0, 50.0)

    one_day = await stats.daily(here, since=_at(20, 12), until=_at(20, 13))
    assert one_day == [DayFigures(date(2026, 11, 20), 1, 0, 0, 0, 40.0, 40.0)]


async def test_daily_generation_times_are_a_bounded_read_of_each_days_newest(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    here, _ = await _period(db)
    monkeypatch.setattr(storage.stats, "MAX_TIMED_JOBS", 4)  # one per day over four days
    days = await StatsRepository(db).daily(here, since=SINCE, until=UNTIL)
    assert [(d.median_generation_seconds, d.p90_generation_seconds) for d in days] == [
        (20.0, 20.0),  # 18-b, the newer of the day's two
        (None, None),
        (40.0, 40.0),
        (None, None),
    ]
    assert [d.jobs for d in days] == [3, 0, 2, 2]  # counts are never capped


async def test_a_year_of_days_is_one_query_plan_on_every_database(db: Database) -> None:
    here, _ = await _period(db)
    year = await StatsRepository(db).daily(here, since=UNTIL - timedelta(days=365), until=UNTIL)
    assert len(year) == 366 and year[-1].day == date(2026, 11, 21)
    assert [d.day for d in year if d.jobs] == [date(2026, 11, d) for d in (18, 20, 21)]
    assert year[-4].median_generation_seconds == statistics.median([10.0, 20.0, 99.0])


# ---- the picture ----------------------------------------------------------------------------


def _week(**changes: int) -> list[DayFigures]:
    first = date(2026, 11, 15)
    days = [
        DayFigures(
            first + timedelta(days=n),
            succeeded=20 + 3 * n,
            failed=n % 3,
            other=1,
            credits_used=25 + 2 * n,
            median_generation_seconds=15.0 + n,
            p90_generation_seconds=24.0 + 1.5 * n,
        )
        for n in range(7)
    ]
    days[3] = dataclasses.replace(days[3], **changes)
    return days


def _png(days: list[DayFigures]) -> Image.Image:
    wording = stats_chart_wording([d.day for d in days], period_days=7, community=True)
    image = Image.open(io.BytesIO(render_stats_chart(days, wording)))
    assert image.format == "PNG"
    return image.convert("RGB")


def _panel(image: Image.Image, index: int) -> Image.Image:
    top = round(panel_top(index))
    return image.crop((0, top, WIDTH, top + round(PANEL_HEIGHT)))


def _differs(one: Image.Image, other: Image.Image) -> bool:
    return ImageChops.difference(one, other).getbbox() is not None


def test_the_chart_is_a_png_of_its_size_whose_pixels_follow_the_data() -> None:
    base = _png(_week())
    assert base.size == STATS_CHART_SIZE == (WIDTH, HEIGHT) == (1000, 750)
    assert len(base.getcolors(maxcolors=1 << 16) or []) > 50  # drawn, anti-aliased, not blank

    assert not _differs(base, _png(_week()))  # the same data, the same picture
    more_credits = _png(_week(credits_used=30))
    assert _differs(_panel(base, 2), _panel(more_credits, 2))
    assert not _differs(_panel(base, 0), _panel(more_credits, 0))
    assert not _differs(_panel(base, 1), _panel(more_credits, 1))

    more_failures = _png(_week(failed=6))
    assert _differs(_panel(base, 0), _panel(more_failures, 0))
    assert not _differs(_panel(base, 2), _panel(more_failures, 2))

    slower = _png(_week(p90_generation_seconds=33.0))
    assert _differs(_panel(base, 1), _panel(slower, 1))
    assert not _differs(_panel(base, 0), _panel(slower, 0))


def test_the_chart_of_nothing_and_of_a_year_are_drawn_too() -> None:
    empty = [DayFigures(date(2026, 11, 14) + timedelta(days=n)) for n in range(8)]
    assert _png(empty).size == (WIDTH, HEIGHT)
    year = [
        DayFigures(date(2025, 11, 21) + timedelta(days=n), n % 40, n % 3, 1, n % 50, 15.0, 30.0)
        for n in range(366)
    ]
    assert _png(year).size == (WIDTH, HEIGHT)
    with pytest.raises(ValueError):
        render_stats_chart(
            year, stats_chart_wording([date(2026, 11, 1)], period_days=1, community=True)
        )


# What the languages issue will translate the labels into: each needs a font that draws it.
TRANSLATED = {
    "es": "Trabajos por día · Años · Señal",
    "pt": "Créditos usados por dia · Não · Ações",
    "de": "Aufträge pro Tag · Größe · Übersicht",
    "fr": "Tâches par jour · Échec · Crédits utilisés",
    "ru": "Задания в день · Успешно · Ошибка · Медиана",
    "ja": "1日あたりのジョブ · 成功 · 失敗 · 中央値 · 使用クレジット",
}


@pytest.mark.parametrize("language", sorted(TRANSLATED))
def test_every_language_of_the_labels_has_a_font_that_draws_it(language: str) -> None:
    text = TRANSLATED[language]
    for bold in (False, True):
        font = font_for(text, 20, bold=bold)
        assert all(has_glyph(font, char) for char in text), (language, font.getname())


def test_translated_labels_are_drawn_not_boxed() -> None:
    days = _week()
    english = stats_chart_wording([d.day for d in days], period_days=7, community=True)
    japanese = dataclasses.replace(english, title=TRANSLATED["ja"])
    boxes = dataclasses.replace(english, title="\u0378" * 12)  # unassigned: a box in any font
    title = (0, 0, WIDTH, round(panel_top(0)))
    drawn = [
        Image.open(io.BytesIO(render_stats_chart(days, wording))).convert("RGB").crop(title)
        for wording in (english, japanese, boxes)
    ]
    assert _differs(drawn[0], drawn[1]) and _differs(drawn[1], drawn[2])


def test_a_character_no_font_has_is_logged_not_hidden(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.charts.fonts"):
        font_for("Jobs \u0378", 20)
    assert "no font here draws every character" in caplog.text


async def test_the_chart_is_drawn_in_its_own_thread() -> None:
    name = await in_chart_thread(lambda: threading.current_thread().name)
    assert name.startswith("charts") and name != threading.current_thread().name
    chart = await stats_chart(_week(), period_days=7, community=False)
    assert chart is not None and chart.filename == STATS_CHART_NAME
    assert Image.open(io.BytesIO(chart.png)).size == STATS_CHART_SIZE
