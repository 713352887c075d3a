"""The face check on intake and the identity gate on output, end to end with real dlib weights:
the command layer, the real ModelsLab client, the simulator over HTTP (its stranger mode makes
some outputs show another person), a real database (SQLite and PostgreSQL).

The selfie is the example astronaut; the stranger is insightface's packaged Tom Hanks crop,
read from the installed package. The simulator's own outputs of the astronaut measure 0.03-0.09
from her selfie, its Tom Hanks outputs 0.73-0.77: well either side of dlib's 0.6.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import re
from pathlib import Path

import pytest
from PIL import Image

from backends.modelslab.simulator import Simulator
from bot.jobs.events import Completed
from tests.chat import Exchange, TestChat
from tests.conftest import AppFactory, make_image
from tests.test_commands import count_rows

G1 = {"community": "guild-1"}
G1_MOD = {"community": "guild-1", "moderator": True, "user": "mod"}
FACES_ON = {"face_check": True, "identity_gate": True, "identity_retries": 1}


def insightface_image(name: str) -> Path:
    spec = importlib.util.find_spec("insightface")
    assert spec is not None and spec.submodule_search_locations, "insightface is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / name


def stranger() -> bytes:
    return insightface_image("Tom_Hanks_54745.png").read_bytes()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def tiny_face(selfie: bytes) -> bytes:
    """The astronaut shrunk so that her face is about 40 px across, on a plain 400 px canvas."""
    small = Image.open(io.BytesIO(selfie)).convert("RGB").resize((210, 210))
    canvas = Image.new("RGB", (400, 400), (200, 200, 205))
    canvas.paste(small, (95, 95))
    return png(canvas)


@pytest.fixture
async def chat(make_app: AppFactory) -> TestChat:
    return TestChat(await make_app(owner_ids="test:root", max_active_per_user=5, **FACES_ON))


async def headshot(chat: TestChat, selfie: bytes, line: str = "/headshot", **where: object):
    return await chat.send(line, attachments={"selfie": selfie}, **G1, **where)  # type: ignore[arg-type]


async def outputs_of(chat: TestChat, exchange: Exchange) -> list[tuple[float | None, bool | None]]:
    assert exchange.reply.job_id is not None
    outputs = await chat.app.jobs.outputs(exchange.reply.job_id)
    return [(out.identity_distance, out.identity_passed) for out in outputs]


async def ledger(chat: TestChat, job_id: str) -> dict[str, int]:
    from sqlalchemy import text

    async with chat.app.db.read() as conn:
        rows = await conn.execute(
            text("SELECT kind, sum(amount) FROM credit_ledger WHERE job_id = :j GROUP BY kind"),
            {"j": job_id},
        )
        return {kind: int(total) for kind, total in rows}


async def test_intake_refuses_each_unusable_selfie_before_any_credit_moves(
    chat: TestChat, selfie: bytes
) -> None:
    group = insightface_image("t1.jpg").read_bytes()
    cases = {
        "no face": (make_image((400, 500), "tan"), "I can't find a face in that photo"),
        "several": (group, "more than one face in that photo: send a selfie with only you in it"),
        "too small": (tiny_face(selfie), "Your face is too small in that photo ("),
    }
    for name, (picture, words) in cases.items():
        refused = await headshot(chat, picture)
        assert words in refused.reply.text, (name, refused.reply.text)
        assert refused.reply.job_id is None, name
        assert await count_rows(chat.app, "jobs") == 0, name
        assert await count_rows(chat.app, "credit_ledger") == 0, name
    assert not [key for key in await chat.app.store.keys() if key.startswith("inputs/")]

    passed = await headshot(chat, selfie)
    assert isinstance(passed.final, Completed), passed.texts
    assert await count_rows(chat.app, "jobs") == 1


async def test_a_stranger_is_made_again_and_only_passing_images_reach_the_user(
    chat: TestChat, simulator: Simulator, selfie: bytes
) -> None:
    # Every second output the simulator makes is the stranger (outputs 1, 3, 5 ...): the
    # two-image job's second image (output 1) is made again alone (output 2, a pass); each
    # single job's image (3, 5) is a stranger and its retry (4, 6) passes.
    simulator.config.stranger_image = stranger()
    simulator.config.stranger_rate = 0.5
    double = await headshot(chat, selfie, "/headshot samples=2")
    single = [await headshot(chat, selfie) for _ in range(2)]
    retried = 0
    for exchange in [double, *single]:
        final = exchange.final
        assert isinstance(final, Completed), exchange.texts
        assert final.unlike == 0 and "may not look like you" not in final.text
        measures = await outputs_of(chat, exchange)
        assert measures and all(passed and d is not None and d <= 0.6 for d, passed in measures)
        job = await chat.app.jobs.get(exchange.reply.job_id or "")
        assert job is not None and job.identity_retries == 1
        retried += job.identity_retries
        # One reserve and one commit per delivered image; nothing refunded, nothing released.
        assert await ledger(chat, job.id) == {"reserve": len(measures), "commit": len(measures)}
    assert len(await outputs_of(chat, double)) == 2
    # The retry asked for the failing image alone: the simulator made 7 images in all.
    assert await count_rows(chat.app, "identity_checks") == 7
    # Only the delivered images are kept.
    outputs = await count_rows(chat.app, "outputs")
    stored = [key for key in await chat.app.store.keys() if not key.startswith("inputs/")]
    assert len(stored) == outputs == 4
    assert await count_rows(chat.app, "identity_checks", "content_key IS NOT NULL") == 0

    stats = await chat.send("/admin stats 30", **G1_MOD)
    assert "3 retries" in stats.reply.text, stats.reply.text
    assert "headshot · modelslab: 4/7 passed" in stats.reply.text, stats.reply.text
    # The same in the metrics: 7 images measured, 4 passed, 3 failed, 3 retries.
    scraped = chat.app.metrics.exposition(await chat.app.figures()).decode()
    assert 'headshot_identity_checks_total{result="passed"} 4.0' in scraped
    assert 'headshot_identity_checks_total{result="failed"} 3.0' in scraped
    assert "headshot_identity_retries_total 3.0" in scraped
    # Measured once per attempt: three jobs, each made twice.
    assert 'headshot_job_stage_seconds_count{stage="identity"} 6.0' in scraped

    shown = await chat.send(f"/show {(double.reply.job_id or '')[:8]}", **G1)
    assert re.search(r"image 1 0\.\d\d", shown.reply.text), shown.reply.text


async def test_when_no_attempt_passes_the_best_is_delivered_with_a_note_and_refunded_once(
    chat: TestChat, simulator: Simulator, selfie: bytes
) -> None:
    simulator.config.stranger_image = stranger()
    simulator.config.stranger_rate = 1.0
    exchange = await headshot(chat, selfie)
    final = exchange.final
    assert isinstance(final, Completed), exchange.texts
    assert final.unlike == 1
    assert "1 image may not look like you: you are not charged for it." in final.text
    job_id = exchange.reply.job_id or ""
    job = await chat.app.jobs.get(job_id)
    assert job is not None and job.identity_retries == 1
    [(distance, passed)] = await outputs_of(chat, exchange)
    assert passed is False and distance is not None and distance > 0.6
    # The closer of the two attempts was kept; the other image is gone from the store.
    checks = await count_rows(chat.app, "identity_checks", f"job_id = '{job_id}'")
    assert checks == 2
    stored = [key for key in await chat.app.store.keys() if not key.startswith("inputs/")]
    assert len(stored) == 1
    assert await ledger(chat, job_id) == {"reserve": 1, "commit": 1, "refund": 1}
    quota = await chat.send("/quota", **G1)
    assert "Today: 4 of 5 images left plus 1 granted credit." in quota.reply.text, quota.reply.text

    stats = await chat.send("/admin stats 30", **G1_MOD)
    assert "1 retry" in stats.reply.text and "1 delivered unlike" in stats.reply.text, (
        stats.reply.text
    )


async def test_no_embedding_reaches_the_log(
    chat: TestChat, simulator: Simulator, selfie: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    simulator.config.stranger_image = stranger()
    simulator.config.stranger_rate = 0.5
    for _ in range(2):
        assert isinstance((await headshot(chat, selfie)).final, Completed)
    # A 128-number embedding would show as a long run of decimals on one line.
    decimals = re.compile(r"-?\d\.\d{3,}")
    for record in caplog.records:
        assert len(decimals.findall(record.getMessage())) < 8, record.getMessage()
