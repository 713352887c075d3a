"""The Telegram adapter in other languages, against the fake Bot API: a person whose app runs in
Spanish is answered in Spanish, the style keyboard included; the command menus are set for
every language shipped; and with a pseudo-language every text Telegram receives in a whole
conversation went through the catalogue."""

from __future__ import annotations

from typing import Any

from bot import replies
from bot.i18n import SHIPPED, speaking, translator
from bot.styles import STYLES
from tests.fake_telegram import FakeTelegram
from tests.pseudo import install_pseudo, opening, unmarked
from tests.test_telegram import (
    World,
    bot_reply_to,
    buttons,
    caption_or_text,
    fake,
    selfie_jpeg,
    world,
)

__all__ = ["fake", "world"]

LUCIA, PSEUDO_USER = 601, 602
DONE = (
    "Done: {count} image · {style} · seed {seed} · job {job}.",
    "Done: {count} images · {style} · seed {seed} · job {job}.",
)


async def result_for(fake: FakeTelegram, chat_id: int, language: str) -> dict[str, Any]:
    start = opening(language, *DONE)

    def found() -> dict[str, Any] | None:
        done = [m for m in fake.bot_messages(chat_id) if caption_or_text(m).startswith(start)]
        return done[-1] if done else None

    return await fake.wait_for(found, timeout=30)


async def test_a_spanish_app_is_answered_in_spanish_keyboard_included(world: World) -> None:
    fake = world.fake
    fake.add_user(LUCIA, "Lucía", language_code="es")
    await world.start()
    world.simulator.config.processing_seconds = 0.3
    es = translator("es")

    command = fake.send_text(LUCIA, LUCIA, "/headshot")
    with speaking("es"):
        ask = replies.send_selfie("headshot", world.app.settings.telegram_wait_seconds)  # type: ignore[union-attr]
    prompt = await bot_reply_to(fake, LUCIA, command["message_id"], ask)
    photo = fake.send_photo(LUCIA, LUCIA, selfie_jpeg(), reply_to=prompt["message_id"])

    with speaking("es"):
        which = replies.pick_style("headshot")
    keyboard = await bot_reply_to(fake, LUCIA, photo["message_id"], which)
    offered = buttons(keyboard)
    with speaking("es"):
        titles = [style.shown_title() for style in STYLES.values()]
    assert [label for label, _ in offered] == [*titles, es.gettext("Default")]
    assert titles != [style.title for style in STYLES.values()]
    assert all(len(data.encode()) <= 64 for _, data in offered)
    studio = next(data for _, data in offered if data.endswith(":studio"))
    fake.press(LUCIA, LUCIA, keyboard["message_id"], studio)

    result = await result_for(fake, LUCIA, "es")
    assert [label for label, _ in buttons(result)] == [es.gettext("Re-roll"), es.gettext("Delete")]
    edits = [c.params["text"] for c in fake.calls_to("editMessageText")]
    queued = opening(
        "es",
        "Got it: your {style} {operation} is queued as job {job}. "
        "This message will show its progress.",
    )
    assert any(text.startswith(queued) for text in edits), edits
    assert not any(text.startswith(("Got it", "Queued", "Generating")) for text in edits)


async def test_command_menus_are_set_in_every_language(world: World) -> None:
    await world.start()
    menus = world.fake.commands
    for language in SHIPPED:
        if language == "en":
            continue
        code = language.split("_")[0]
        tr = translator(language)
        headshot = next(c for c in menus[f"default|{code}"] if c["command"] == "headshot")
        assert headshot["description"] == tr.gettext("Turn a selfie into a professional headshot")
        admins = {c["command"]: c["description"] for c in menus[f"all_chat_administrators|{code}"]}
        assert admins["admin"] == tr.gettext("Moderate this bot here")
        assert admins["cancel"] == tr.gettext("Stop what the bot is waiting for")
    english = next(c for c in menus["default"] if c["command"] == "headshot")
    assert english["description"] == "Turn a selfie into a professional headshot"


def every_text(fake: FakeTelegram) -> list[str]:
    """Each text the bot sent or edited in: messages, captions, callback answers, buttons."""
    found = []
    for call in fake.calls:
        params = call.params
        for key in ("text", "caption"):
            if isinstance(params.get(key), str):
                found.append(params[key])
        for item in params.get("media") or []:
            if isinstance(item, dict) and isinstance(item.get("caption"), str):
                found.append(item["caption"])
        markup = params.get("reply_markup") or {}
        for row in markup.get("inline_keyboard", []) if isinstance(markup, dict) else []:
            found += [str(button.get("text") or "") for button in row]
    return [text for text in found if text]


async def test_every_text_of_a_conversation_goes_through_the_catalogue(world: World) -> None:
    fake = world.fake
    fake.add_user(PSEUDO_USER, "Pseudo", language_code=install_pseudo())
    await world.start()
    me = PSEUDO_USER

    async def said(text: str, **options: Any) -> dict[str, Any]:
        sent = fake.send_text(me, me, text, **options)
        return await bot_reply_to(fake, me, sent["message_id"])

    prompt = await said("/headshot navy suit")
    sticker = fake.send_sticker(me, me, reply_to=prompt["message_id"])
    await bot_reply_to(fake, me, sticker["message_id"])  # not a selfie
    photo = fake.send_photo(me, me, selfie_jpeg(), reply_to=prompt["message_id"])
    keyboard = await bot_reply_to(fake, me, photo["message_id"])
    fake.press(me, me, keyboard["message_id"], buttons(keyboard)[-1][1])  # the default style
    first = await fake.wait_for(
        lambda: next((m for m in fake.bot_messages(me) if m.get("photo")), None), timeout=30
    )
    reroll = buttons(first)[0][1]
    await fake.wait_for_answer(fake.press(me, me, first["message_id"], reroll))
    await fake.wait_for(lambda: len([m for m in fake.bot_messages(me) if m.get("photo")]) >= 2)
    for line in ("/help", "/styles", "/quota", "/history", "/language", "/cancel", "/nonsense"):
        await said(line)
    await fake.wait_for_answer(fake.press(me, me, first["message_id"], buttons(first)[1][1]))
    asked = await said("/forget")
    await fake.wait_for_answer(fake.press(me, me, asked["message_id"], buttons(asked)[0][1]))
    await fake.wait_for(
        lambda: any(
            c.method == "editMessageText" and c.params.get("message_id") == asked["message_id"]
            for c in fake.calls
        )
    )

    seen = every_text(fake)
    assert len(seen) > 20
    left = {text: unmarked(text, "navy suit", "nonsense") for text in seen}
    assert {rest: text for text, rest in left.items() if rest} == {}
