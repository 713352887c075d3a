"""The command layer end to end, through a test adapter that types commands as text: the real
ModelsLab client against the simulator over HTTP, a real SQLite file, real image files."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from aiohttp import web

from backends.modelslab.simulator import Simulator
from bot.app import HeadshotApp
from bot.fetch import SafeFetcher, is_public_address
from bot.jobs.events import Completed, Queued, Started
from tests.chat import TestChat
from tests.conftest import FAST, AppFactory, make_image
from tests.databases import all_rows

MOD = {"community": "guild-1", "moderator": True}
MEMBER = {"community": "guild-1"}


async def count_rows(app: HeadshotApp, table: str, where: str = "1 = 1") -> int:
    from sqlalchemy import text

    async with app.db.read() as conn:
        query = text(f"SELECT count(*) FROM {table} WHERE {where}")
        return int((await conn.execute(query)).scalar_one())


async def input_files(app: HeadshotApp) -> list[str]:
    return [key for key in await app.store.keys() if key.startswith("inputs/")]


@pytest.fixture
async def chat(make_app: AppFactory) -> TestChat:
    return TestChat(await make_app(owner_ids="test:root", selfie_retention_seconds=600))


# ---- generation ---------------------------------------------------------------------------


async def test_headshot_with_an_attached_selfie_ends_with_rehosted_images_and_buttons(
    chat: TestChat, selfie: bytes
) -> None:
    done = await chat.send(
        "/headshot corporate navy suit, soft light", attachments={"selfie": selfie}
    )

    assert done.reply.text.startswith("Got it: your corporate headshot is queued as job ")
    final = done.final
    assert isinstance(final, Completed), done.texts
    assert final.text.startswith("Done: 1 image · corporate · seed ")
    assert [b.label for b in final.buttons] == ["Re-roll", "Delete"]
    job = await chat.app.jobs.get(done.reply.job_id or "")
    assert job is not None and job.style == "corporate"
    assert job.user_prompt == "navy suit, soft light"
    assert "navy suit, soft light" in job.params["prompt"]
    assert job.params["negative_prompt"]
    async with httpx.AsyncClient() as client:
        response = await client.get(final.images[0].url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"


async def test_a_headshot_reads_the_askers_standing_in_one_go(
    chat: TestChat, selfie: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Who they are, their settings and their ban: one read for the command's checks, not one
    each. The checks still see each of them."""
    services = chat.app.commands.services
    reads: list[str] = []

    def counted(owner: object, name: str) -> None:
        real = getattr(owner, name)

        async def spy(*args: object, **kwargs: object) -> object:
            reads.append(name)
            return await real(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)

    counted(services.standing, "read")
    for owner, name in (
        (services.accounts, "find_user"),
        (services.scoped, "for_context"),
        (services.bans, "find"),
    ):
        counted(owner, name)

    await chat.send("/headshot", attachments={"selfie": selfie}, community="guild")
    assert reads == ["read"]
    banned = await chat.send("/admin ban bob", community="guild", moderator=True)
    assert banned.reply.text == "User bob is now banned here."
    reads.clear()
    refused = await chat.send(
        "/headshot", attachments={"selfie": selfie}, user="bob", community="guild"
    )
    assert refused.reply.text.startswith("You can't use this bot here")
    assert reads == ["read"]


@pytest.mark.parametrize(
    ("line", "operation"),
    [
        ("/facegen studio smiling s_scale=1.5 samples=2 width=512 height=512", "facegen"),
        ("/avatar creative controlnet_selection=pose,canny pose_strength=0.7", "avatar"),
        ("/flux-headshot outdoor width=512 height=512 num_inference_steps=8", "flux_headshot"),
    ],
)
async def test_every_operation_runs_with_its_own_knobs(
    chat: TestChat, selfie: bytes, line: str, operation: str
) -> None:
    attachments = {"selfie": selfie}
    if operation == "avatar":
        attachments["pose_image"] = make_image((256, 384), "gray")
    done = await chat.send(line, attachments=attachments)

    assert isinstance(done.final, Completed), done.texts
    job = await chat.app.jobs.get(done.reply.job_id or "")
    assert job is not None and job.operation == operation
    if operation == "facegen":
        assert (job.params["s_scale"], job.params["samples"]) == (1.5, 2)
        assert len(done.final.images) == 2
    if operation == "avatar":
        assert job.params["controlnet_selection"] == ["pose", "canny"]
        assert job.params["pose_strength"] == 0.7
    if operation == "flux_headshot":
        assert job.params["num_inference_steps"] == 8


async def test_progress_events_read_like_a_status_line(
    chat: TestChat, selfie: bytes, simulator: Simulator
) -> None:
    simulator.config.processing_seconds = 0.3
    done = await chat.send("/headshot", attachments={"selfie": selfie})

    kinds = [type(event) for event in done.events]
    assert Started in kinds and kinds[-1] is Completed
    started = next(e for e in done.events if isinstance(e, Started))
    assert started.text.startswith("Generating your image, about ")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/headshot", "Attach a selfie"),
        ("/headshot samples=3", "samples must be from 1 to 2 (got 3)."),
        ("/headshot width=4096", "width must be from 64 to 512 (got 4096)."),
        ("/headshot style=anime", "style must be one of corporate, linkedin, "),
        ("/headshot s_scale=lots", "s_scale must be a number (got “lots”)."),
        ("/flux_headshot s_scale=1", "/flux_headshot has no option “s_scale”"),
        ("/headshot colour=blue", "/headshot has no option “colour” (its options: selfie, "),
        ("/styles please", "I didn't understand “please”. Usage: /styles"),
        ("/paint me", "Unknown command /paint"),
        (
            "/avatar controlnet_selection=pose,laser",
            "controlnet_selection takes one or more of pose, canny, depth, separated by commas "
            "(got “pose,laser”).",
        ),
        ("/avatar controlnet_selection=,", "controlnet_selection takes one or more of pose, "),
    ],
)
async def test_bad_options_get_one_clear_message_and_reserve_nothing(
    chat: TestChat, selfie: bytes, line: str, expected: str
) -> None:
    attachments = {} if line == "/headshot" else {"selfie": selfie}
    done = await chat.send(line, attachments=attachments)

    assert expected in done.reply.text
    assert done.reply.private and done.reply.job_id is None
    assert await count_rows(chat.app, "credit_ledger") == 0
    assert await input_files(chat.app) == []


async def test_a_file_that_is_not_an_image_is_refused(chat: TestChat) -> None:
    done = await chat.send("/headshot", attachments={"selfie": b"%PDF-1.7 not a selfie"})

    assert "isn't an image" in done.reply.text or "not an image" in done.reply.text
    assert await count_rows(chat.app, "jobs") == 0


@pytest.fixture
async def image_host(selfie: bytes) -> AsyncIterator[str]:
    app = web.Application()

    async def serve(_request: web.Request) -> web.Response:
        return web.Response(body=selfie, content_type="image/jpeg")

    app.router.add_get("/me.jpg", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/me.jpg"
    await runner.cleanup()


async def test_a_selfie_link_is_fetched_through_the_safe_fetcher(
    make_app: AppFactory, image_host: str
) -> None:
    # The loopback server stands in for the internet; every other private address stays refused.
    def loopback_is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return ip == ipaddress.ip_address("127.0.0.1") or is_public_address(ip)

    fetcher = SafeFetcher(max_bytes=10 * 1024 * 1024, address_allowed=loopback_is_public)
    chat = TestChat(await make_app(fetcher=fetcher))

    done = await chat.send(f"/headshot studio selfie_url={image_host}")
    assert isinstance(done.final, Completed), done.texts


async def test_a_selfie_link_to_a_private_address_is_refused(
    chat: TestChat, image_host: str
) -> None:
    done = await chat.send(f"/headshot selfie_url={image_host}")

    assert "private" in done.reply.text and done.reply.job_id is None
    assert await count_rows(chat.app, "credit_ledger") == 0


async def test_a_third_job_in_progress_is_refused_with_a_clear_answer(
    chat: TestChat, selfie: bytes, simulator: Simulator
) -> None:
    simulator.config.processing_seconds = 60
    first = await chat.send("/headshot", attachments={"selfie": selfie}, wait=False)
    second = await chat.send("/headshot", attachments={"selfie": selfie}, wait=False)
    third = await chat.send("/headshot", attachments={"selfie": selfie}, wait=False)

    assert first.reply.job_id and second.reply.job_id
    assert third.reply.text.startswith("You already have 2 jobs in progress: wait for one")
    assert third.reply.job_id is None
    assert await count_rows(chat.app, "jobs") == 2
    quota = await chat.send("/quota")
    assert "• job " in quota.reply.text and quota.reply.text.count("• job") == 2
    await complete_processing(simulator, 2)
    await first.finished()
    await second.finished()


async def test_quota_exhausted_is_refused_with_the_reset_time(
    make_app: AppFactory, selfie: bytes
) -> None:
    chat = TestChat(await make_app(daily_quota=1))
    await chat.send("/headshot", attachments={"selfie": selfie})
    refused = await chat.send("/headshot", attachments={"selfie": selfie})

    assert refused.reply.text.startswith("You have no credits left: your daily allowance resets")
    quota = await chat.send("/quota")
    assert quota.reply.text.startswith("Today: 0 of 1 image left.")


# ---- the user's own things ------------------------------------------------------------------


async def test_styles_and_help(chat: TestChat) -> None:
    styles = await chat.send("/styles")
    lines = styles.reply.text.splitlines()
    assert len(lines) >= 9 and "• corporate: " in styles.reply.text
    assert "(default here)" in styles.reply.text

    member_help = await chat.send("/help", **MEMBER)
    moderator_help = await chat.send("/help", **MOD)
    assert "/headshot" in member_help.reply.text and "/admin" not in member_help.reply.text
    assert "Moderators: /admin quota set, grant, ban, unban, stats, " in moderator_help.reply.text
    assert len(moderator_help.reply.text) < 2000  # one Discord message
    # Owners-only commands are listed to owners only.
    assert "workers" not in moderator_help.reply.text
    assert "workers" in (await chat.send("/help", user="root")).reply.text


async def test_history_show_reroll_and_delete(chat: TestChat, selfie: bytes) -> None:
    jobs = []
    for style in ("studio", "casual", "linkedin", "outdoor", "creative"):
        done = await chat.send(f"/headshot {style}", attachments={"selfie": selfie})
        jobs.append(done.reply.job_id or "")

    page1 = await chat.send("/history")
    assert page1.reply.text.startswith("Your jobs, newest first (page 1 of 1):")
    assert page1.reply.text.count("• ") == 5
    assert page1.reply.text.index(jobs[4][:8]) < page1.reply.text.index(jobs[0][:8])
    assert len(page1.reply.images) == 5

    shown = await chat.send(f"/show {jobs[0][:8]}")
    assert shown.reply.text.startswith(f"Job {jobs[0][:8]} · headshot · studio")
    assert [b.label for b in shown.reply.buttons] == ["Re-roll", "Delete"]

    other = await chat.send(f"/show {jobs[0][:8]}", user="bob")
    assert other.reply.text.startswith("No job of yours matches")
    not_yours = await chat.press(shown.reply.buttons[1], user="bob")
    assert not_yours.reply.text.startswith("No job of yours matches")
    assert await chat.app.jobs.get(jobs[0]) is not None

    deleted = await chat.press(shown.reply.buttons[1])
    assert deleted.reply.text == f"Deleted job {jobs[0][:8]} and its 1 image."
    assert (await chat.send("/history")).reply.text.count("• ") == 4


async def test_reroll_keeps_the_settings_with_a_new_seed(chat: TestChat, selfie: bytes) -> None:
    first = await chat.send("/headshot studio warm smile seed=42", attachments={"selfie": selfie})
    assert isinstance(first.final, Completed)

    again = await chat.press(first.final.buttons[0])

    assert "(a re-roll of job " in again.reply.text
    assert isinstance(again.final, Completed), again.texts
    old = await chat.app.jobs.get(first.reply.job_id or "")
    new = await chat.app.jobs.get(again.reply.job_id or "")
    assert old is not None and new is not None
    assert new.seed != 42 and new.style == "studio" and new.user_prompt == "warm smile"
    assert {k: v for k, v in new.params.items() if k != "seed"} == {
        k: v for k, v in old.params.items() if k != "seed"
    }


async def test_reroll_after_the_selfie_is_gone_says_to_send_it_again(
    make_app: AppFactory, selfie: bytes
) -> None:
    chat = TestChat(await make_app(selfie_retention_seconds=0))
    first = await chat.send("/headshot", attachments={"selfie": selfie})
    assert await input_files(chat.app) == []

    again = await chat.press(first.final.buttons[0])  # type: ignore[union-attr]
    assert again.reply.text.startswith("Selfies are deleted as soon as a job ends here")


# ---- forget -------------------------------------------------------------------------------


async def test_forget_asks_first_then_deletes_everything_and_nothing_else(
    chat: TestChat, selfie: bytes
) -> None:
    app = chat.app
    await chat.send("/headshot studio alice-prompt", attachments={"selfie": selfie}, **MEMBER)
    await chat.send("/headshot", attachments={"selfie": selfie}, user="bob", **MEMBER)
    await chat.send("/admin quota set alice 3", user="mod", **MOD)
    await chat.send("/admin grant alice 2", user="mod", **MOD)
    alice_keys, bob_keys = await _store_keys_of(app, "alice"), await _store_keys_of(app, "bob")
    alice = await app.accounts.find_user("test", "alice")
    assert alice is not None and alice_keys and bob_keys and not alice_keys & bob_keys

    ask = await chat.send("/forget")
    assert ask.reply.text.startswith("This deletes everything we hold about you: 1 job,")
    confirm = ask.reply.buttons[0]
    assert confirm.label == "Delete everything"
    stolen = await chat.press(confirm, user="bob")
    assert stolen.reply.text.startswith("That confirmation has expired or isn't yours")

    done = await chat.press(confirm)
    assert done.reply.text.startswith("Done: deleted 1 job, ")
    again = await chat.press(confirm)
    assert again.reply.text.startswith("That confirmation has expired")

    dump = await _dump_database(app)
    assert "alice" not in dump
    assert "alice-prompt" not in dump
    left = set(await app.store.keys())
    assert not alice_keys & left, "alice's images and kept selfie are gone from the store"
    assert bob_keys <= left
    for table in ("jobs", "credit_ledger", "scoped_settings"):
        assert await count_rows(app, table, f"user_id = {alice.id}") == 0
    bob = await app.accounts.find_user("test", "bob")
    assert bob is not None
    bob_history = await chat.send("/history", user="bob")
    assert bob_history.reply.text.count("• ") == 1
    async with httpx.AsyncClient() as client:
        for image in bob_history.reply.images:
            assert (await client.get(image.url)).status_code == 200


async def _store_keys_of(app: HeadshotApp, user: str) -> set[str]:
    """The image-store keys of a user's jobs: outputs and kept selfies."""
    record = await app.accounts.find_user("test", user)
    assert record is not None
    jobs, _ = await app.commands.services.history.page(record.id, offset=0, limit=100)
    keys = {job.selfie_key for job in jobs if job.selfie_key}
    for job in jobs:
        keys |= {out.content_key for out in await app.jobs.outputs(job.id)}
    return keys


async def _dump_database(app: HeadshotApp) -> str:
    """Every value of every row of every table, as text."""
    rows = await asyncio.to_thread(all_rows, app.db.url)
    return "\n".join(" ".join(map(str, row.values())) for table in rows.values() for row in table)


async def test_forget_waits_for_jobs_in_progress(
    chat: TestChat, selfie: bytes, simulator: Simulator
) -> None:
    simulator.config.processing_seconds = 60
    running = await chat.send("/headshot", attachments={"selfie": selfie}, wait=False)
    ask = await chat.send("/forget")
    busy = await chat.press(ask.reply.buttons[0])

    assert busy.reply.text.startswith("You have 1 job in progress: run /forget again once")
    assert await count_rows(chat.app, "jobs") == 1
    await complete_processing(simulator, 1)
    await running.finished()


async def test_forget_with_nothing_stored(chat: TestChat) -> None:
    done = await chat.send("/forget", user="stranger")
    assert done.reply.text == "We hold nothing about you: there is nothing to delete."


# ---- after a restart -----------------------------------------------------------------------


async def test_follow_a_finished_job_gives_its_final_event(chat: TestChat, selfie: bytes) -> None:
    done = await chat.send("/headshot", attachments={"selfie": selfie})
    replay = [event async for event in chat.app.commands.follow(done.reply.job_id or "")]

    assert len(replay) == 1 and isinstance(replay[0], Completed)
    assert replay[0].images == done.final.images  # type: ignore[union-attr]


async def test_follow_a_waiting_job_starts_with_its_place_in_the_queue(
    make_app: AppFactory, selfie: bytes, simulator: Simulator
) -> None:
    simulator.config.processing_seconds = 60
    chat = TestChat(await make_app(modelslab_max_queued=1, max_active_per_user=5))
    first = await chat.send("/headshot", attachments={"selfie": selfie}, wait=False)
    second = await chat.send("/headshot", attachments={"selfie": selfie}, wait=False)
    await _until(lambda: bool(second.events))

    assert isinstance(second.events[0], Queued)
    assert second.events[0].text.startswith("Queued: you're next, about ")
    for _ in range(2):  # one provider slot: the second reaches the provider after the first
        await complete_processing(simulator, 1)
    await first.finished()
    await second.finished()
    assert isinstance(second.final, Completed)


async def complete_processing(simulator: Simulator, count: int) -> None:
    """Wait until the provider holds `count` processing jobs, then finish them."""

    def processing() -> list[str]:
        return [job.id for job in simulator.jobs.values() if job.status == "processing"]

    await _until(lambda: len(processing()) >= count)
    for job_id in processing():
        simulator.complete_now(job_id)


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_kept_selfie_is_deleted_once_its_reroll_window_has_passed(
    make_app: AppFactory, selfie: bytes
) -> None:
    timings = dataclasses.replace(FAST, input_sweep_seconds=0.05)
    chat = TestChat(await make_app(selfie_retention_seconds=0.5, timings=timings))
    done = await chat.send("/headshot", attachments={"selfie": selfie})
    job = await chat.app.jobs.get(done.reply.job_id or "")
    assert job is not None and job.selfie_key in await input_files(chat.app)

    # The sweep deletes the file, then lets go of the row (`expired_inputs`: either order is
    # safe): wait for both.
    for _ in range(100):
        swept = await chat.app.jobs.get(job.id)
        if not await input_files(chat.app) and swept is not None and swept.selfie_key is None:
            break
        await asyncio.sleep(0.05)
    assert await input_files(chat.app) == []
    job = await chat.app.jobs.get(job.id)
    assert job is not None and job.selfie_key is None and job.inputs_expire_at is None
    again = await chat.press(done.final.buttons[0])  # type: ignore[union-attr]
    assert again.reply.text.startswith("That job's selfie is no longer kept (selfies are deleted")


async def test_one_user_racing_two_jobs_at_the_limit_gets_exactly_one(
    make_app: AppFactory, selfie: bytes, simulator: Simulator
) -> None:
    simulator.config.processing_seconds = 60
    chat = TestChat(await make_app(max_active_per_user=1))
    results = await asyncio.gather(
        *(chat.send("/headshot", attachments={"selfie": selfie}, wait=False) for _ in range(4))
    )

    accepted = [r for r in results if r.reply.job_id]
    assert len(accepted) == 1
    assert all(
        r.reply.text.startswith("You already have 1 job in progress")
        for r in results
        if not r.reply.job_id
    )
    assert await count_rows(chat.app, "credit_ledger") == 1
    await complete_processing(simulator, 1)
    await accepted[0].finished()


async def test_forget_racing_a_new_job_never_deletes_a_running_one(
    chat: TestChat, selfie: bytes, simulator: Simulator
) -> None:
    await chat.send("/headshot", attachments={"selfie": selfie})
    simulator.config.processing_seconds = 60
    ask = await chat.send("/forget")
    job, forgot = await asyncio.gather(
        chat.send("/headshot", attachments={"selfie": selfie}, wait=False),
        chat.press(ask.reply.buttons[0]),
    )

    if job.reply.job_id:
        # The job won (forget waits for it), or forget ended before the job was made (its
        # selfie is checked first, in a worker process): either way the job goes on untouched.
        waited_or_done = ("You have 1 job in progress", "Done: deleted 1 job")
        assert forgot.reply.text.startswith(waited_or_done), forgot.texts
        await complete_processing(simulator, 1)
        await job.finished()
        assert isinstance(job.final, Completed)
    else:  # forget won: the new job was refused cleanly
        assert forgot.reply.text.startswith("Done: deleted 1 job")
        assert job.reply.private


async def test_forget_does_not_give_back_todays_allowance(
    make_app: AppFactory, selfie: bytes
) -> None:
    chat = TestChat(await make_app(daily_quota=2))
    await chat.send("/headshot", attachments={"selfie": selfie})
    ask = await chat.send("/forget")
    await chat.press(ask.reply.buttons[0])

    quota = await chat.send("/quota")
    assert quota.reply.text.startswith("Today: 1 of 2 images left.")


async def test_long_or_odd_input_is_quoted_short(chat: TestChat) -> None:
    noisy = "x" * 3000 + "\u202e@everyone"
    for line in (f"/{noisy}", f"/headshot style={noisy}", f"/headshot s_scale={noisy}"):
        reply = (await chat.send(line)).reply
        assert len(reply.text) < 400, reply.text
        assert "\u202e" not in reply.text
