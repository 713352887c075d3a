"""The identity gate's figures as they are read back, on a real SQLite file and a real
PostgreSQL: `/admin stats` (retries, pass rate per operation and backend, images delivered
though unlike) and `/show` (each image's distance from the selfie), and the replies that word
them and the face check's refusals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime

from sqlalchemy import insert, update

from bot.replies import (
    face_too_small,
    faces_busy,
    job_details,
    no_face,
    several_faces,
    stats,
    unlike_note,
)
from bot.ui import JobSummary
from bot.views import Likeness, likeness
from storage.accounts import AccountRepository
from storage.database import Database
from storage.history import HistoryRepository
from storage.jobs import JobRepository, NewJob
from storage.models import IdentityCheck, Job, utcnow
from storage.records import IdentityFigures, JobState, JobStats, OutputRecord, UserRecord
from storage.stats import StatsRepository
from tests.chat import TestChat
from tests.conftest import AppFactory

TODAY = date(2026, 11, 21)
QUOTA = 10
SINCE = datetime(2026, 11, 1, tzinfo=UTC)

# (distance, passed) of each delivered image; (None, None): the gate did not measure it.
Measure = tuple[float | None, bool | None]
# (attempt, slot, backend, distance, passed): one image the gate measured.
Check = tuple[int, int, str, float | None, bool]


async def make_job(
    db: Database,
    job_id: str,
    user: UserRecord,
    community_id: int | None,
    *,
    operation: str = "headshot",
    delivered: Sequence[Measure] = ((None, None),),
    retries: int = 0,
    checks: Sequence[Check] = (),
    created: datetime | None = None,
) -> None:
    """A succeeded job whose outputs carry these measures, with the gate's rows beside it."""
    jobs = JobRepository(db)
    new = NewJob(
        id=job_id,
        user=user.id,
        community=community_id,
        operation=operation,
        params={},
        credits=len(delivered),
        selfie_key=None,
        pose_key=None,
        seed=1,
    )
    await jobs.create(new, daily_quota=QUOTA, today=TODAY)
    await jobs.transition(job_id, [JobState.QUEUED], JobState.REHOSTING)
    outputs = [
        OutputRecord(
            job_id, n, f"{job_id}-{n}.jpg", f"t-{job_id}-{n}", "image/jpeg", 1, 1, 1, *measure
        )
        for n, measure in enumerate(delivered)
    ]
    assert await jobs.succeed(job_id, outputs, generation_time=1.0)
    async with db.write() as conn:
        values: dict[str, object] = {"identity_retries": retries}
        if created is not None:
            values["created_at"] = created
        await conn.execute(update(Job).where(Job.id == job_id).values(**values))
        for attempt, slot, backend, distance, passed in checks:
            await conn.execute(
                insert(IdentityCheck).values(
                    job_id=job_id,
                    attempt=attempt,
                    slot=slot,
                    operation=operation,
                    backend=backend,
                    distance=distance,
                    passed=passed,
                    seconds=0.1,
                    created_at=utcnow(),
                )
            )


async def _dataset(db: Database) -> tuple[int, int]:
    accounts = AccountRepository(db)
    u1 = await accounts.user("test", "u1")
    u2 = await accounts.user("test", "u2")
    c1 = await accounts.community("test", "c1")
    c2 = await accounts.community("test", "c2")
    # Slot 1 failed twice: delivered all the same (the best of its two), after one retry.
    await make_job(
        db,
        "c1-a",
        u1,
        c1,
        delivered=((0.41, True), (0.72, False)),
        retries=1,
        checks=(
            (0, 0, "modelslab", 0.41, True),
            (0, 1, "modelslab", 0.80, False),
            (1, 1, "modelslab", 0.72, False),
        ),
    )
    await make_job(
        db, "c1-b", u2, c1, delivered=((0.30, True),), checks=((0, 0, "modelslab", 0.30, True),)
    )
    # No face at first; the retry's image passed.
    await make_job(
        db,
        "c1-c",
        u2,
        c1,
        operation="avatar",
        delivered=((0.50, True),),
        retries=1,
        checks=((0, 0, "local", None, False), (1, 0, "local", 0.50, True)),
    )
    await make_job(db, "c1-off", u1, c1)  # the gate was off
    # Measured but not judged (the selfie had no face): delivered, left out of the pass rate.
    await make_job(
        db,
        "c1-unjudged",
        u1,
        c1,
        delivered=((None, None),),
        checks=((0, 0, "modelslab", None, None),),
    )
    await make_job(
        db,
        "c1-old",
        u1,
        c1,
        delivered=((0.90, False),),
        retries=5,
        checks=((0, 0, "modelslab", 0.90, False),),
        created=datetime(2026, 10, 1, tzinfo=UTC),
    )
    await make_job(
        db, "c2-a", u1, c2, delivered=((0.20, True),), checks=((0, 0, "modelslab", 0.20, True),)
    )
    await make_job(
        db, "dm-a", u2, None, delivered=((0.25, True),), checks=((0, 0, "local", 0.25, True),)
    )
    return c1, c2


async def test_summary_counts_the_gate_per_operation_and_backend(db: Database) -> None:
    c1, c2 = await _dataset(db)
    repository = StatsRepository(db)

    one = await repository.summary(c1, since=SINCE)
    assert one.jobs == 5
    assert one.identity_retries == 2  # c1-a and c1-c; c1-old's are before the window
    assert one.identity == (
        IdentityFigures("avatar", "local", checks=2, passed=1),
        IdentityFigures("headshot", "modelslab", checks=4, passed=2),
    )
    # 7 checks in c1 this week, one unjudged (c1-unjudged): 6 count.
    assert (one.identity_checks, one.identity_passed, one.delivered_unlike) == (6, 3, 1)

    every = await repository.summary(None, since=SINCE)
    assert every.identity == (
        IdentityFigures("avatar", "local", checks=2, passed=1),
        IdentityFigures("headshot", "local", checks=1, passed=1),
        IdentityFigures("headshot", "modelslab", checks=5, passed=3),
    )
    assert (every.identity_retries, every.delivered_unlike) == (2, 1)

    older = await repository.summary(c1, since=datetime(2026, 9, 1, tzinfo=UTC))
    assert (older.identity_retries, older.identity_checks, older.delivered_unlike) == (7, 7, 2)

    other = await repository.summary(c2, since=SINCE)
    assert other.identity == (IdentityFigures("headshot", "modelslab", checks=1, passed=1),)
    assert (other.identity_retries, other.delivered_unlike) == (0, 0)

    nothing = await repository.summary(c1, since=datetime(2027, 1, 1, tzinfo=UTC))
    assert (nothing.identity, nothing.identity_retries, nothing.delivered_unlike) == ((), 0, 0)

    # Deleting a job takes its measures (they are the user's), not the retries it cost.
    assert await HistoryRepository(db).delete("c1-a") is not None
    after = await repository.summary(c1, since=SINCE)
    assert after.identity == (
        IdentityFigures("avatar", "local", checks=2, passed=1),
        IdentityFigures("headshot", "modelslab", checks=1, passed=1),
    )
    assert (after.identity_retries, after.delivered_unlike) == (2, 0)


def _stats(**identity: object) -> JobStats:
    return JobStats(
        jobs=14,
        succeeded=13,
        failed=1,
        credits_used=12,
        top_users=(),
        median_generation_seconds=20.0,
        **identity,  # type: ignore[arg-type]
    )


def test_stats_text_has_one_line_for_the_gate_and_one_per_operation_and_backend() -> None:
    report = _stats(
        identity_retries=2,
        identity=(
            IdentityFigures("avatar", "local", checks=4, passed=3),
            IdentityFigures("headshot", "modelslab", checks=10, passed=9),
        ),
        delivered_unlike=1,
    )
    text = stats(report, 7, community=True).text
    assert text.splitlines()[2:] == [
        "Identity gate: 12 of 14 images passed (86%), 2 retries, 1 delivered unlike (not charged).",
        "• avatar · local: 3/4 passed (75%)",
        "• headshot · modelslab: 9/10 passed (90%)",
    ]

    one = _stats(identity=(IdentityFigures("headshot", "modelslab", 1, 1),), identity_retries=1)
    assert stats(one, 1, community=False).text.splitlines()[2] == (
        "Identity gate: 1 of 1 image passed (100%), 1 retry, 0 delivered unlike (not charged)."
    )


def test_stats_text_says_nothing_of_the_gate_when_it_measured_nothing() -> None:
    text = stats(_stats(), 7, community=True).text
    assert "Identity" not in text and len(text.splitlines()) == 2
    # Retries whose measures went with their deleted jobs are still the operator's cost.
    retried = stats(_stats(identity_retries=3), 7, community=True).text
    assert retried.splitlines()[2] == "Identity gate: 3 retries, 0 delivered unlike (not charged)."


def test_stats_text_with_many_backends_stays_one_message() -> None:
    figures = tuple(
        IdentityFigures(operation, backend, 1000, 999)
        for operation in ("headshot", "facegen", "avatar", "flux_headshot")
        for backend in ("modelslab", "local")
    )
    report = replace(
        _stats(identity=figures, identity_retries=12345, delivered_unlike=67),
        top_users=tuple((f"{n:020}", n) for n in range(5)),
    )
    text = stats(report, 30, community=False).text
    assert len(text) < 2000  # Discord's limit
    # 7992 of 8000 is 99.9%: shown as 99%, since 8 did fail.
    assert "7,992 of 8,000 images passed (99%)" in text
    assert "• flux_headshot · local: 999/1,000 passed (99%)" in text
    few = _stats(identity=(IdentityFigures("headshot", "local", 1000, 1),))
    assert "1/1,000 passed (1%)" in stats(few, 1, community=True).text


def _outputs(*measures: Measure) -> list[OutputRecord]:
    return [
        OutputRecord("j", n, f"k{n}", f"t{n}", "image/jpeg", 1, 1, 1, *measure)
        for n, measure in enumerate(measures)
    ]


def test_likeness_keeps_the_measured_images_in_their_order() -> None:
    assert likeness(_outputs((None, None)), 0.6) is None  # the gate was off
    assert likeness([], 0.6) is None
    measured = likeness(_outputs((0.41, True), (None, False), (None, None), (0.72, False)), 0.55)
    assert measured == Likeness(((1, 0.41, True), (2, None, False), (4, 0.72, False)), 0.55)


def test_job_details_shows_each_images_distance() -> None:
    job = JobSummary(
        id="abcdef0123456789",
        operation="headshot",
        state="succeeded",
        style="studio",
        prompt=None,
        seed=7,
        created_at=datetime(2026, 12, 3, 12, 0, tzinfo=UTC),
    )
    plain = job_details(job, ()).text
    assert "Likeness" not in plain
    shown = job_details(job, (), likeness(_outputs((0.414, True), (0.7249, False)), 0.6)).text
    assert shown.splitlines()[-1] == (
        "Likeness: image 1 0.41 ✓, image 2 0.72 ✗ "
        "(dlib distance to your selfie; 0.60 or less is the same person)"
    )
    faceless = job_details(job, (), likeness(_outputs((None, False)), 0.5)).text
    assert faceless.splitlines()[-1] == (
        "Likeness: image 1 no face found ✗ "
        "(dlib distance to your selfie; 0.50 or less is the same person)"
    )
    assert plain == shown.rsplit("\n", 1)[0]


def test_face_check_refusals_and_the_unlike_note() -> None:
    assert no_face() == (
        "I can't find a face in that photo: send a selfie with your face clear and facing the "
        "camera."
    )
    assert faces_busy() == "Too many selfies are being checked right now: try again in a minute."
    assert several_faces() == (
        "I see more than one face in that photo: send a selfie with only you in it, or crop "
        "the others out."
    )
    assert face_too_small(40, 64) == (
        "Your face is too small in that photo (40 px across; at least 64 px needed): send a "
        "closer selfie, or crop it around your face."
    )
    assert unlike_note(1, 1) == "1 image may not look like you: you are not charged for it."
    assert unlike_note(2, 2) == "2 images may not look like you: you are not charged for them."
    assert unlike_note(1, 2) == "1 of 2 images may not look like you: you are not charged for it."
    assert unlike_note(2, 4) == (
        "2 of 4 images may not look like you: you are not charged for them."
    )


async def test_show_and_admin_stats_through_the_commands(make_app: AppFactory) -> None:
    app = await make_app(
        owner_ids="test:root", face_check=False, identity_gate=False, identity_threshold=0.55
    )
    chat = TestChat(app)
    alice = await app.accounts.user("test", "alice")
    job_id = "abcdef01" + "0" * 24
    await make_job(
        app.db,
        job_id,
        alice,
        None,
        delivered=((0.41, True), (0.58, False)),
        retries=1,
        checks=(
            (0, 0, "modelslab", 0.41, True),
            (0, 1, "modelslab", 0.63, False),
            (1, 1, "modelslab", 0.58, False),
        ),
    )

    shown = await chat.send("/show abcdef01")
    assert shown.reply.text.splitlines()[-1] == (
        "Likeness: image 1 0.41 ✓, image 2 0.58 ✗ "
        "(dlib distance to your selfie; 0.55 or less is the same person)"
    )
    assert len(shown.reply.images) == 2

    report = (await chat.send("/admin stats", user="root")).reply.text
    assert report.splitlines()[-2:] == [
        "Identity gate: 1 of 3 images passed (33%), 1 retry, 1 delivered unlike (not charged).",
        "• headshot · modelslab: 1/3 passed (33%)",
    ]
