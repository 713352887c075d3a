"""Which language the bot answers in, through the command layer: the person's own choice
(/language), their app's, their community's (/admin language), DEFAULT_LANGUAGE, English; and
a job's texts in its asker's language wherever and whenever they are shown."""

from __future__ import annotations

import pytest

from bot import replies
from bot.i18n import speaking, translator
from bot.jobs.events import Completed
from tests.chat import PLATFORM, TestChat
from tests.conftest import AppFactory

MOD = {"community": "guild-1", "moderator": True}
MEMBER = {"community": "guild-1"}
HELP_FIRST_LINE = "Send /headshot with a selfie attached to get a professional headshot."


@pytest.fixture
async def chat(make_app: AppFactory) -> TestChat:
    return TestChat(await make_app(owner_ids="test:root"))


async def answered_in(chat: TestChat, user: str = "alice", **where: str | None) -> str:
    actor = chat.actor(user, community=where.get("community"), locale=where.get("locale"))
    return await chat.app.commands.language_of(actor)


def first_line(exchange_text: str) -> str:
    return exchange_text.splitlines()[0]


async def test_a_person_is_answered_in_their_apps_language(chat: TestChat) -> None:
    german = translator("de").gettext(HELP_FIRST_LINE)
    assert german != HELP_FIRST_LINE

    helped = await chat.send("/help", locale="de")
    assert first_line(helped.reply.text) == german
    # A region the bot has no catalogue for reads its language's; an unknown one, English.
    assert first_line((await chat.send("/help", locale="de-AT")).reply.text) == german
    assert first_line((await chat.send("/help", locale="ko")).reply.text) == HELP_FIRST_LINE
    assert first_line((await chat.send("/help")).reply.text) == HELP_FIRST_LINE


async def test_own_choice_beats_the_app_and_auto_goes_back_to_it(chat: TestChat) -> None:
    shown = await chat.send("/language", locale="de")
    with speaking("de"):
        assert "Deutsch" in shown.reply.text and "es, pt-BR, de, fr, ru, ja" in shown.reply.text

    chosen = await chat.send("/language es-MX", locale="de")
    assert "español" in chosen.reply.text
    assert chosen.reply.text == translator("es").gettext(
        "From now on I answer you in {language}. /language auto goes back to your app's language.",
        language="español",
    )
    assert await answered_in(chat, locale="de") == "es"
    assert await answered_in(chat, locale="de", community="guild-1") == "es"  # everywhere

    back = await chat.send("/language auto", locale="de")
    assert "Deutsch" in back.reply.text
    assert await answered_in(chat, locale="de") == "de"
    assert await answered_in(chat) == "en"


async def test_a_code_the_bot_does_not_speak_is_refused_and_changes_nothing(
    chat: TestChat,
) -> None:
    refused = await chat.send("/language klingon", locale="fr")
    assert refused.reply.refused
    assert refused.reply.text == translator("fr").gettext(
        "I don't speak “{code}”: choose one of {codes}.",
        code="klingon",
        codes="en, es, pt-BR, de, fr, ru, ja",
    )
    assert await answered_in(chat, locale="fr") == "fr"
    assert await chat.app.accounts.find_user(PLATFORM, "alice") is None


async def test_the_communitys_language_is_for_those_whose_own_the_bot_does_not_speak(
    chat: TestChat,
) -> None:
    refused = await chat.send("/admin language fr", **MEMBER)
    assert refused.reply.refused
    assert await answered_in(chat, "bob", community="guild-1") == "en"

    done = await chat.send("/admin language fr", user="mod", **MOD)
    assert not done.reply.refused
    assert await answered_in(chat, "bob", community="guild-1") == "fr"
    assert await answered_in(chat, "bob", community="guild-1", locale="ko") == "fr"
    assert await answered_in(chat, "bob", community="guild-1", locale="ru") == "ru"
    assert await answered_in(chat, "bob", community="guild-2") == "en"
    assert await answered_in(chat, "bob") == "en"  # in a DM
    # The moderator's change is in the audit log, a person's own choice is not; the log is the
    # community's, in its language, whoever of its moderators reads it.
    await chat.send("/language ja", user="bob", **MEMBER)
    log = await chat.send("/admin audit", user="mod", locale="de", **MOD)
    assert "language → fr" in log.reply.text and "ja" not in log.reply.text
    audit_title = translator("fr").gettext("Audit log, newest first (page {page}):", page=1)
    assert first_line(log.reply.text) == audit_title

    # An owner's choice in a DM is everyone's, under each community's own.
    await chat.send("/admin language de", user="root")
    assert await answered_in(chat, "carol") == "de"
    assert await answered_in(chat, "carol", community="guild-2") == "de"
    assert await answered_in(chat, "carol", community="guild-1") == "fr"


async def test_default_language_is_the_last_choice_before_english(make_app: AppFactory) -> None:
    chat = TestChat(await make_app(default_language="pt-BR"))
    assert await answered_in(chat) == "pt_BR"
    assert await answered_in(chat, locale="ja") == "ja"
    helped = await chat.send("/help", locale="zh-TW")
    assert first_line(helped.reply.text) == translator("pt_BR").gettext(HELP_FIRST_LINE)


async def test_forget_removes_the_choice_of_language(chat: TestChat) -> None:
    await chat.send("/language ru", locale="de")
    assert await answered_in(chat, locale="de") == "ru"
    ask = await chat.send("/forget", locale="de")
    assert ask.reply.buttons, ask.reply.text
    await chat.press(ask.reply.buttons[0], locale="de")
    assert await answered_in(chat, locale="de") == "de"
    assert await chat.app.accounts.find_user(PLATFORM, "alice") is None


async def test_a_jobs_texts_are_in_its_askers_language_and_noted_with_its_delivery(
    chat: TestChat, selfie: bytes
) -> None:
    layer = chat.app.commands
    actor = chat.actor("alice", locale="ja")
    async with layer.answering(actor):
        reply = await layer.run_line(
            actor, "/headshot studio", {"selfie": selfie}, deliver_to={"chat": 1}
        )
    assert reply.job_id is not None
    with speaking("ja"):
        assert reply.text == replies.queued(reply.job_id, "headshot", "studio").text
    assert reply.text != replies.queued(reply.job_id, "headshot", "studio").text
    owed = await layer.services.deliveries.pending(PLATFORM)
    assert [(p.job_id, p.language) for p in owed] == [(reply.job_id, "ja")]
    # Another process, or this one after a restart, shows it in the same language.
    assert layer.noted_language(owed[0].language) == "ja"
    assert layer.noted_language(None) == "en"

    done = await chat.send("/headshot studio", attachments={"selfie": selfie}, locale="de")
    final = done.final
    assert isinstance(final, Completed)
    english = final.text
    with speaking("de"):
        german = final.text
    assert german != english and done.event_texts[-1] == german
    assert all(text for text in done.event_texts)
