"""The Discord adapter in other languages, against the fake Discord: a person whose client runs
in German is answered in German (the queue, the progress, the result, its buttons); the command
descriptions are registered in every language shipped; and with a pseudo-language every text
Discord receives in a whole conversation went through the catalogue."""

from __future__ import annotations

from typing import Any

from bot import replies
from bot.commands.spec import COMMANDS
from bot.i18n import SHIPPED, speaking, translator
from tests.fake_discord import DISCORD_LOCALES, Interaction, Message
from tests.pseudo import install_pseudo, opening, unmarked
from tests.test_discord import ALICE, GUILD, MANAGE_GUILD, World, fake, texts, world

__all__ = ["fake", "world"]

DONE = (
    "Done: {count} image · {style} · seed {seed} · job {job}.",
    "Done: {count} images · {style} · seed {seed} · job {job}.",
)
# Discord's locales for each catalogue shipped (besides English, Discord's own descriptions).
LOCALES = {"es": ["es-ES", "es-419"], "pt_BR": ["pt-BR"], "de": ["de"], "fr": ["fr"]}
LOCALES |= {"ru": ["ru"], "ja": ["ja"]}


def has_result(interaction: Interaction) -> bool:
    original = interaction.original
    return original is not None and bool(original.files) and bool(original.buttons())


async def final_of(world: World, interaction: Interaction) -> Message:
    await world.fake.wait_for(lambda: has_result(interaction), timeout=30)
    assert interaction.original is not None
    return interaction.original


async def answered(world: World, interaction: Interaction) -> Message:
    """The interaction's answer, once it is given (in place of "thinking…", or after it)."""

    def given() -> bool:
        original = interaction.original
        return bool(interaction.followups) or (original is not None and not original.loading)

    await world.fake.wait_for(given, timeout=30)
    if interaction.followups:
        return interaction.followups[-1]
    assert interaction.original is not None
    return interaction.original


def job_of(message: Message) -> str:
    return next(
        button["custom_id"].split("job=")[1]
        for button in message.buttons()
        if "job=" in button.get("custom_id", "")
    )


async def test_a_german_client_is_answered_in_german(world: World) -> None:
    world.fake.locales[ALICE] = "de"
    await world.start()
    world.simulator.config.processing_seconds = 0.4
    de = translator("de")

    result = await final_of(world, await world.headshot(style="corporate"))
    job = job_of(result)
    shown = texts(result)
    with speaking("de"):
        queued = replies.queued(job, "headshot", "corporate").text
    assert queued in shown and queued != replies.queued(job, "headshot", "corporate").text
    progress = (
        opening("de", "Queued: you're next."),
        opening("de", "Queued: you're next, about {time}."),
        opening("de", "Generating your image…"),
        opening("de", "Generating your image, about {time}…"),
    )
    assert any(text.startswith(progress) for text in shown), shown
    description = result.embeds[0]["description"]
    assert description.startswith(opening("de", *DONE)) and "corporate" in description
    assert not description.startswith("Done")
    assert [b["label"] for b in result.buttons()] == [de.gettext("Re-roll"), de.gettext("Delete")]

    # Someone else, in English, in the same server: their own language.
    english = await final_of(world, await world.headshot(user_id=2002, style="studio"))
    assert english.embeds[0]["description"].startswith("Done: 1 image · studio · seed ")


async def test_command_descriptions_are_registered_in_every_language(world: World) -> None:
    await world.start()
    commands = {command["name"]: command for command in world.fake.commands}
    for language, locales in LOCALES.items():
        tr = translator(language)
        for locale in locales:
            assert locale in DISCORD_LOCALES
            headshot = commands["headshot"]
            summary = COMMANDS["headshot"].summary
            assert headshot["description_localizations"][locale] == tr.gettext(summary)
            selfie = next(o for o in headshot["options"] if o["name"] == "selfie")
            described = tr.gettext(COMMANDS["headshot"].option("selfie").description)  # type: ignore[union-attr]
            assert selfie["description_localizations"][locale] == described
            admin = commands["admin"]
            assert admin["description_localizations"][locale] == tr.gettext(
                "Moderate this bot here"
            )
        # Names stay English: a command is typed the same everywhere.
        assert all(
            "name_localizations" not in c or not c["name_localizations"] for c in commands.values()
        )
    assert set(LOCALES) == set(SHIPPED) - {"en"}


def every_text(message: Message) -> list[str]:
    """Each text a message showed, in every state it was in: its content, its embeds' words,
    its buttons' labels."""
    found = []
    for state in [*message.edits, message.snapshot()]:
        found.append(str(state.get("content") or ""))
        for embed in state.get("embeds") or []:
            found += [str(embed.get(key) or "") for key in ("title", "description")]
            found.append(str((embed.get("footer") or {}).get("text") or ""))
        found += [str(button.get("label") or "") for button in _buttons(state)]
    return [text for text in found if text]


def _buttons(state: dict[str, Any]) -> list[dict[str, Any]]:
    pending, found = list(state.get("components") or []), []
    while pending:
        component = pending.pop()
        if component.get("type") == 2:
            found.append(component)
        pending += component.get("components") or []
    return found


async def test_every_text_of_a_conversation_goes_through_the_catalogue(world: World) -> None:
    world.fake.locales[ALICE] = install_pseudo()
    await world.start()
    fake = world.fake
    user = {"user_id": ALICE, "guild_id": GUILD}

    first = await final_of(world, await world.headshot(style="studio", prompt="navy suit"))
    pressed = await fake.press(first, first.buttons()[0]["label"], **user)  # re-roll
    await final_of(world, pressed)
    for command, options in [
        ("help", {}),
        ("styles", {}),
        ("quota", {}),
        ("history", {}),
        ("show", {"job": job_of(first)}),
        ("language", {}),
        ("headshot", {}),  # no selfie: a refusal
        ("admin stats", {}),
    ]:
        moderator = MANAGE_GUILD if command.startswith("admin") else 0
        await answered(
            world, await fake.run_command(command, options, permissions=moderator, **user)
        )
    await answered(world, await fake.press(first, first.buttons()[1]["label"], **user))  # delete
    asked = await answered(world, await fake.run_command("forget", {}, **user))
    await answered(world, await fake.press(asked, asked.buttons()[0]["label"], **user))

    seen = [text for message in fake.messages.values() for text in every_text(message)]
    assert len(seen) > 20
    left = {text: unmarked(text, "navy suit", "studio") for text in seen}
    assert {rest: text for text, rest in left.items() if rest} == {}
