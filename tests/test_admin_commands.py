"""Every moderation command end to end through the test adapter, with the audit log, scopes
(global by owners in a DM, community by its moderators, user) and the refusals."""

from __future__ import annotations

import asyncio

import pytest

from backends.modelslab.simulator import Simulator
from bot.jobs.events import Completed, Failed
from tests.chat import TestChat
from tests.conftest import AppFactory
from tests.test_commands import count_rows

G1_MOD = {"community": "guild-1", "moderator": True, "user": "mod"}
G2_MOD = {"community": "guild-2", "moderator": True, "user": "mod2"}
G1 = {"community": "guild-1"}
G2 = {"community": "guild-2"}
OWNER_DM = {"user": "root"}


@pytest.fixture
async def chat(make_app: AppFactory) -> TestChat:
    return TestChat(await make_app(owner_ids="test:root", max_active_per_user=5))


async def headshot(chat: TestChat, selfie: bytes, line: str = "/headshot", **where: object):
    return await chat.send(line, attachments={"selfie": selfie}, **where)  # type: ignore[arg-type]


async def test_quota_set_for_everyone_and_for_one_user_narrowest_wins(chat: TestChat) -> None:
    everyone = await chat.send("/admin quota set everyone 10", **G1_MOD)
    one = await chat.send("/admin quota set bob 1", **G1_MOD)

    assert everyone.reply.text == "Daily allowance for everyone here: 10 images per day."
    assert one.reply.text == "Daily allowance for user bob here: 1 image per day."
    assert (await chat.send("/quota", **G1)).reply.text.startswith("Today: 10 of 10 images left.")
    bob = await chat.send("/quota", user="bob", **G1)
    assert bob.reply.text.startswith("Today: 1 of 1 image left.")
    elsewhere = await chat.send("/quota", user="bob", **G2)
    assert elsewhere.reply.text.startswith("Today: 5 of 5 images left.")


async def test_grant_adds_credits_that_show_in_quota(chat: TestChat, selfie: bytes) -> None:
    granted = await chat.send("/admin grant bob 3", **G1_MOD)

    assert granted.reply.text == "Gave user bob 3 credits; they don't expire."
    quota = await chat.send("/quota", user="bob", **G1)
    assert quota.reply.text.startswith("Today: 5 of 5 images left plus 3 granted credits.")


async def test_ban_refuses_before_a_credit_moves_and_unban_lifts_it(
    chat: TestChat, selfie: bytes
) -> None:
    banned = await chat.send("/admin ban bob spamming the channel", **G1_MOD)
    assert banned.reply.text == "User bob is now banned here."
    again = await chat.send("/admin ban bob", **G1_MOD)
    assert again.reply.text == "User bob was already banned here."
    ledger_before = await count_rows(chat.app, "credit_ledger")

    refused = await headshot(chat, selfie, user="bob", **G1)
    assert refused.reply.text == (
        "You can't use this bot here (spamming the channel). "
        "Ask a moderator if you think this is a mistake."
    )
    assert await count_rows(chat.app, "credit_ledger") == ledger_before
    assert await count_rows(chat.app, "jobs") == 0
    other_server = await headshot(chat, selfie, user="bob", **G2)
    assert isinstance(other_server.final, Completed)

    lifted = await chat.send("/admin unban bob", **G1_MOD)
    assert lifted.reply.text == "User bob may use the bot here again."
    assert isinstance((await headshot(chat, selfie, user="bob", **G1)).final, Completed)


async def test_an_owner_bans_everywhere_from_a_dm(chat: TestChat, selfie: bytes) -> None:
    banned = await chat.send("/admin ban bob", **OWNER_DM)
    assert banned.reply.text == "User bob is now banned everywhere (global)."

    for where in (G1, G2, {}):
        refused = await headshot(chat, selfie, user="bob", **where)
        assert refused.reply.text.startswith("You can't use this bot here.")


async def test_disable_and_enable_an_operation(chat: TestChat, selfie: bytes) -> None:
    off = await chat.send("/admin disable flux_headshot", **G1_MOD)
    assert off.reply.text == "/flux_headshot is now off here."
    refused = await headshot(chat, selfie, "/flux_headshot width=512 height=512", **G1)
    assert (
        refused.reply.text
        == "/flux_headshot is turned off here: ask a moderator, or see /help for the others."
    )
    assert await count_rows(chat.app, "credit_ledger") == 0

    on = await chat.send("/admin enable flux_headshot", **G1_MOD)
    assert on.reply.text == "/flux_headshot is now on here."
    allowed = await headshot(chat, selfie, "/flux_headshot width=512 height=512", **G1)
    assert isinstance(allowed.final, Completed)


async def test_a_community_cannot_enable_what_the_operator_disabled(chat: TestChat) -> None:
    await chat.send("/admin disable avatar", **OWNER_DM)
    refused = await chat.send("/admin enable avatar", **G1_MOD)
    assert refused.reply.text.startswith("/avatar is turned off by the bot's operator")


async def test_style_default(chat: TestChat, selfie: bytes) -> None:
    done = await chat.send("/admin style-default black-and-white", **G1_MOD)
    assert done.reply.text == "Jobs here now use the black_and_white style unless they name one."

    styles = await chat.send("/styles", **G1)
    assert "• black_and_white: " in styles.reply.text
    assert "(default here)" in styles.reply.text.split("• black_and_white: ")[1].splitlines()[0]
    job = await headshot(chat, selfie, **G1)
    record = await chat.app.jobs.get(job.reply.job_id or "")
    assert record is not None and record.style == "black_and_white"


async def test_safety_can_only_get_stricter_than_the_operator_set_it(
    chat: TestChat, selfie: bytes
) -> None:
    assert (await chat.send("/admin safety pixelate", **OWNER_DM)).reply.text == (
        "Flagged images everywhere (global) are now shown as: pixelate."
    )
    looser = await chat.send("/admin safety blur", **G1_MOD)
    assert looser.reply.text.startswith("The safety filter is already at “pixelate”")
    stricter = await chat.send("/admin safety black", **G1_MOD)
    assert stricter.reply.text == "Flagged images here are now shown as: black."

    here = await headshot(chat, selfie, **G1)
    there = await headshot(chat, selfie, **G2)
    record_here = await chat.app.jobs.get(here.reply.job_id or "")
    record_there = await chat.app.jobs.get(there.reply.job_id or "")
    assert record_here is not None and record_there is not None
    assert record_here.params["safety_checker_type"] == "black"
    assert record_there.params["safety_checker_type"] == "pixelate"
    assert record_here.params["safety_checker"] is True


async def test_banned_words_are_refused_before_a_credit_moves(
    chat: TestChat, selfie: bytes
) -> None:
    added = await chat.send("/admin banned-words add Gore", **G1_MOD)
    assert added.reply.text == "Prompts with “gore” are now refused here."
    await chat.send("/admin banned-words add nsfw", **OWNER_DM)

    for prompt, word in (("/headshot studio GORE! scene", "gore"), ("/headshot nsfw", "nsfw")):
        refused = await headshot(chat, selfie, prompt, **G1)
        assert refused.reply.text == (
            f"Your prompt contains “{word}”, which isn't allowed here: rephrase it and try again."
        )
    assert await count_rows(chat.app, "credit_ledger") == 0
    assert await count_rows(chat.app, "jobs") == 0

    listed = await chat.send("/admin banned-words list", **G1_MOD)
    assert listed.reply.text == "Banned words: gore.\nAlso banned by the operator: nsfw."
    removed = await chat.send("/admin banned-words remove gore", **G1_MOD)
    assert removed.reply.text == "Prompts with “gore” are allowed again here."
    assert isinstance((await headshot(chat, selfie, "/headshot gore", **G1)).final, Completed)


async def test_stats_jobs_and_refund(chat: TestChat, selfie: bytes, simulator: Simulator) -> None:
    ok = await headshot(chat, selfie, user="alice", **G1)
    await headshot(chat, selfie, user="alice", **G1)
    simulator.config.failure_rate = 1.0
    failed = await headshot(chat, selfie, user="bob", **G1)
    simulator.config.failure_rate = 0.0
    await headshot(chat, selfie, user="carol", **G2)
    assert isinstance(ok.final, Completed) and isinstance(failed.final, Failed)

    stats = await chat.send("/admin stats 30", **G1_MOD)
    lines = stats.reply.text.splitlines()
    assert lines[0] == "Last 30 days here: 3 jobs, 2 succeeded, 1 failed (success rate 67%)."
    assert lines[1].startswith("Credits used: 2. Median generation time: ")
    assert lines[2] == "Top users: user alice (2), user bob (1)."
    chart = stats.reply.chart
    assert chart is not None and chart.filename == "stats.png"
    assert chart.png.startswith(b"\x89PNG\r\n\x1a\n")

    jobs = await chat.send("/admin jobs", **G1_MOD)
    assert jobs.reply.text.count("• ") == 3 and "user carol" not in jobs.reply.text
    failed_only = await chat.send("/admin jobs failed", **G1_MOD)
    assert failed_only.reply.text.count("• ") == 1 and "user bob" in failed_only.reply.text

    short = (ok.reply.job_id or "")[:8]
    refunded = await chat.send(f"/admin refund {short}", **G1_MOD)
    assert refunded.reply.text == f"Returned 1 credit to user alice for job {short}."
    twice = await chat.send(f"/admin refund {short}", **G1_MOD)
    assert twice.reply.text == f"Job {short} was already refunded."
    failed_short = (failed.reply.job_id or "")[:8]
    nothing = await chat.send(f"/admin refund {failed_short}", **G1_MOD)
    assert nothing.reply.text == f"Job {failed_short} failed: its credits were already returned."
    quota = await chat.send("/quota", user="alice", **G1)
    assert quota.reply.text.startswith("Today: 3 of 5 images left plus 1 granted credit.")
    carol_job = await chat.send("/admin jobs", **G2_MOD)
    carol_short = carol_job.reply.text.split("• ")[1][:8]
    elsewhere = await chat.send(f"/admin refund {carol_short}", **G1_MOD)
    assert elsewhere.reply.text.startswith("No job here matches")


async def test_every_admin_action_is_audited_and_each_community_sees_only_its_own(
    chat: TestChat,
) -> None:
    await chat.send("/admin quota set everyone 7", **G1_MOD)
    await chat.send("/admin ban bob", **G1_MOD)
    await chat.send("/admin banned-words add spam", **G2_MOD)
    await chat.send("/admin style-default studio", **G2_MOD)

    g1 = (await chat.send("/admin audit", **G1_MOD)).reply.text
    g2 = (await chat.send("/admin audit", **G2_MOD)).reply.text
    assert g1.startswith("Audit log, newest first (page 1):")
    assert " · test:mod · ban → test:bob" in g1
    assert " · test:mod · quota set → everyone (per_day: 7)" in g1
    assert "spam" not in g1 and "studio" not in g1 and "test:mod2" not in g1
    assert " · test:mod2 · banned-words add → spam" in g2 and "test:bob" not in g2


async def test_a_moderator_of_one_community_cannot_touch_another(chat: TestChat) -> None:
    # The mod of guild-1 is not a moderator in guild-2: the adapter says so, the layer refuses.
    refused = await chat.send("/admin quota set everyone 0", user="mod", **G2)
    assert refused.reply.text == "Only this community's moderators can use /admin commands."
    audit = await chat.send("/admin audit", user="mod", **G2)
    assert audit.reply.text == "Only this community's moderators can use /admin commands."
    quota = await chat.send("/quota", **G2)
    assert quota.reply.text.startswith("Today: 5 of 5 images left.")
    # Changing guild-1 leaves guild-2 as it was.
    await chat.send("/admin quota set everyone 1", **G1_MOD)
    assert (await chat.send("/quota", **G2)).reply.text.startswith("Today: 5 of 5")


@pytest.mark.parametrize(
    "line",
    ["/admin stats", "/admin quota set everyone 1", "/admin grant bob 5", "/admin audit"],
)
async def test_members_and_dm_users_are_refused_admin_commands(chat: TestChat, line: str) -> None:
    member = await chat.send(line, user="alice", **G1)
    dm = await chat.send(line, user="alice")

    assert member.reply.text == "Only this community's moderators can use /admin commands."
    assert dm.reply.text == (
        "Admin commands work in a server or group; in a DM only the bot's owners can use them."
    )
    assert member.reply.private and dm.reply.private
    assert await count_rows(chat.app, "audit_log") == 0
    assert await count_rows(chat.app, "scoped_settings") == 0


async def test_moderators_cannot_grant_or_refund_to_themselves(
    chat: TestChat, selfie: bytes
) -> None:
    own = await headshot(chat, selfie, user="mod", **G1)
    grant = await chat.send("/admin grant mod 100", **G1_MOD)
    refund = await chat.send(f"/admin refund {(own.reply.job_id or '')[:8]}", **G1_MOD)

    assert (
        grant.reply.text
        == "You can't grant credits to yourself: ask another moderator or an owner."
    )
    assert refund.reply.text == "You can't refund yourself: ask another moderator or an owner."
    assert await count_rows(chat.app, "credit_ledger", "kind IN ('grant', 'refund')") == 0
    by_owner = await chat.send("/admin grant root 1", user="root", **G1)
    assert by_owner.reply.text == "Gave user root 1 credit; it doesn't expire."


async def test_lifting_a_community_ban_says_when_a_global_one_remains(chat: TestChat) -> None:
    await chat.send("/admin ban bob", **OWNER_DM)
    await chat.send("/admin ban bob", **G1_MOD)

    lifted = await chat.send("/admin unban bob", **G1_MOD)
    assert lifted.reply.text == (
        "Lifted the ban here. A ban by the bot's operator still applies everywhere."
    )


async def test_concurrent_list_changes_are_all_kept(chat: TestChat) -> None:
    words = [f"word{i}" for i in range(12)]
    await asyncio.gather(
        *(chat.send(f"/admin banned-words add {word}", **G1_MOD) for word in words)
    )

    listed = await chat.send("/admin banned-words list", **G1_MOD)
    assert sorted(
        listed.reply.text.removeprefix("Banned words: ").rstrip(".").split(", ")
    ) == sorted(words)
    assert await count_rows(chat.app, "audit_log", "action = 'banned-words add'") == len(words)


async def test_a_member_learns_nothing_about_admin_options(chat: TestChat) -> None:
    refused = await chat.send("/admin grant bob 999999", **G1)
    assert refused.reply.text == "Only this community's moderators can use /admin commands."
    alone = await chat.send("/admin", **G1_MOD)
    assert alone.reply.text.startswith("Which admin command? Type /help to see them")
