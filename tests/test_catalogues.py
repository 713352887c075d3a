"""The translation catalogues (bot/locale) and the rules that pick one (bot/i18n): every
message translated in every shipped language with the English placeholders, the right plural
forms, the template and the compiled files in step with the code and the translations."""

from __future__ import annotations

import gettext
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from bot.charts.wording import stats_chart_wording
from bot.i18n import ENGLISH, SHIPPED, catalogue_for, first_shipped, translator
from bot.i18n.translator import DOMAIN, LOCALE_DIR

ROOT = Path(__file__).resolve().parent.parent
TRANSLATED = [language for language in SHIPPED if language != ENGLISH]
PLACEHOLDER = re.compile(r"\{(\w*)\}")
# CLDR's plural categories, as Babel writes them in each catalogue's Plural-Forms.
PLURAL_FORMS = {"es": 3, "pt_BR": 3, "de": 2, "fr": 3, "ru": 3, "ja": 1}


def template() -> Catalog:
    with (LOCALE_DIR / f"{DOMAIN}.pot").open("rb") as file:
        return read_po(file)


def catalogue(language: str) -> Catalog:
    with (LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as file:
        return read_po(file, locale=language)


def ids(catalog: Catalog) -> set[str | tuple[str, ...]]:
    return {message.id for message in catalog if message.id}


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


# ---- which catalogue ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("de", "de"),
        ("es-419", "es"),  # Discord's Latin American Spanish
        ("es-ES", "es"),
        ("pt-BR", "pt_BR"),  # Discord
        ("pt-br", "pt_BR"),  # Telegram
        ("pt-PT", "pt_BR"),  # the one Portuguese shipped
        ("pt", "pt_BR"),
        ("de_AT.UTF-8", "de"),  # the terminal's LANG
        ("ja", "ja"),
        ("en-GB", "en"),
        ("zh-TW", None),  # not shipped: the caller falls back
        ("C.UTF-8", None),
        ("", None),
        (None, None),
        ("!!", None),
    ],
)
def test_a_platforms_code_maps_to_a_catalogue_by_the_rules(
    code: str | None, expected: str | None
) -> None:
    assert catalogue_for(code) == expected


def test_the_first_code_with_a_catalogue_wins_then_english() -> None:
    assert first_shipped("zh-TW", "fr", "de") == "fr"  # the person's, the community's, …
    assert first_shipped(None, "ko", "ru-RU") == "ru"
    assert first_shipped("xx", None) == ENGLISH


# ---- the catalogues -------------------------------------------------------------------------


def test_the_template_holds_every_message_the_code_wraps() -> None:
    with (ROOT / "babel.cfg").open() as mapping:
        method_map, options_map = parse_mapping_cfg(mapping)
    found = set()
    for _, _, message, _, _ in extract_from_dir(ROOT, method_map, options_map):
        found.add(message if isinstance(message, str) else tuple(message))
    assert found == ids(template()), "run the pybabel commands of LANGUAGES.md"


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_message_is_translated_with_the_english_placeholders(language: str) -> None:
    catalog = catalogue(language)
    assert ids(catalog) == ids(template()), "update the catalogue (LANGUAGES.md)"
    assert catalog.num_plurals == PLURAL_FORMS[language]
    for message in catalog:
        if not message.id:
            continue
        assert not message.fuzzy, (language, message.id)
        english = message.id if isinstance(message.id, tuple) else (message.id,)
        translated = message.string if isinstance(message.string, tuple) else (message.string,)
        if isinstance(message.id, tuple):
            assert len(translated) == catalog.num_plurals, (language, message.id)
        for text in translated:
            assert text.strip(), (language, message.id)
            assert placeholders(text) == placeholders(english[-1]), (language, message.id, text)


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_shipped_compiled_catalogue_is_the_translation(language: str) -> None:
    compiled = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.mo"
    with compiled.open("rb") as file:
        shipped = gettext.GNUTranslations(file)
    catalog = catalogue(language)
    form_of = gettext.c2py(catalog.plural_expr)  # the Plural-Forms rule, as gettext reads it
    for message in catalog:
        if not message.id:
            continue
        if isinstance(message.id, tuple):
            for n in (0, 1, 2, 3, 5, 11, 21, 1_000_000):
                got = shipped.ngettext(message.id[0], message.id[1], n)
                assert got == message.string[form_of(n)], "run pybabel compile (LANGUAGES.md)"
        else:
            assert shipped.gettext(message.id) == message.string, "run pybabel compile"


# ---- text in a language ---------------------------------------------------------------------


def test_russian_has_three_plural_forms_and_japanese_one() -> None:
    ru, ja = translator("ru"), translator("ja")
    days = [
        ru.ngettext("Last {count} day everywhere", "Last {count} days everywhere", n)
        for n in (1, 3, 5, 21)
    ]
    assert days == [
        "Последний 1 день, везде",
        "Последние 3 дня, везде",
        "Последние 5 дней, везде",
        "Последний 21 день, везде",
    ]
    assert {
        ja.ngettext("Last {count} day everywhere", "Last {count} days everywhere", n)
        for n in (1, 2)
    } == {"全体の過去1日間", "全体の過去2日間"}


def test_numbers_and_dates_take_the_languages_own_forms() -> None:
    assert translator("de").number(12.5, 1) == "12,5"
    assert translator("en").number(12.5, 1) == "12.5"
    assert translator("fr").number(12345) == "12\u202f345"
    day = date(2026, 11, 21)
    assert translator("ja").date(day, "MMMd") == "11月21日"
    assert translator("de").date(day, "MMMd") == "21. Nov."
    assert translator("en").date(day, "yMMMd") == "Nov 21, 2026"


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_stats_chart_reads_in_each_language(language: str) -> None:
    days = [date(2026, 11, 20), date(2026, 11, 21)]
    english = stats_chart_wording(days, period_days=1, community=True)
    there = stats_chart_wording(days, period_days=1, community=True, tr=translator(language))
    assert there.jobs_panel == translator(language).gettext("Jobs per day")
    same = [
        field
        for field in ("title", "jobs_panel", "succeeded", "failed", "credits_panel", "no_jobs")
        if getattr(there, field) == getattr(english, field)
    ]
    assert same == [], (language, same)


def test_an_unshipped_language_is_refused() -> None:
    with pytest.raises(ValueError, match="no catalogue for 'ko'"):
        translator("ko")


# ---- the platforms' limits, in every language -------------------------------------------------

DISCORD_DESCRIPTION, TELEGRAM_MENU_ENTRY, DISCORD_LABEL = 100, 256, 80
TELEGRAM_CALLBACK_BYTES, TELEGRAM_CAPTION = 64, 1024


@pytest.mark.parametrize("language", SHIPPED)
def test_texts_stay_within_every_platforms_limits(language: str) -> None:
    from adapters.telegram.outgoing import pick_keyboard
    from bot.commands.spec import COMMANDS, GROUP_SUMMARIES
    from bot.i18n import _, speaking
    from bot.jobs import reasons
    from bot.jobs.events import Completed, Failed
    from bot.replies import default_style_label, forget_ask, history_page
    from bot.styles import STYLES
    from bot.ui import ImageRef, JobSummary
    from bot.waits import Waits

    with speaking(language):
        described = [_(spec.summary) for spec in COMMANDS.values()]
        described += [_(o.description) for spec in COMMANDS.values() for o in spec.options]
        described += [_(summary) for summary in GROUP_SUMMARIES.values()]
        too_long = [text for text in described if not 1 <= len(text) <= DISCORD_DESCRIPTION]
        assert too_long == []  # Discord's option and command descriptions (Telegram's: 256)

        job = JobSummary(
            "f" * 32,
            "flux_headshot",
            "succeeded",
            "black_and_white",
            None,
            4_294_967_295,
            datetime(2026, 12, 4, tzinfo=UTC),
        )
        image = ImageRef("https://example.test/i.png", "outputs/i.png", "image/png", 512, 512)
        done = Completed(job.id, (image, image), job, refunded=2, unlike=2)
        reason = reasons.stored("the generator refused the request", "x" * 200)
        failed = Failed(job.id, reason, True, can_retry=True)
        for caption in (done.text, failed.text):
            assert len(caption) <= TELEGRAM_CAPTION

        labels = [button.label for button in done.buttons + failed.buttons]
        labels += [default_style_label(), *(style.shown_title() for style in STYLES.values())]
        labels += [b.label for b in forget_ask("c" * 32, 3, 10).buttons]
        entries = [(job, (image,))] * 2
        labels += [b.label for b in history_page(entries, 2, 3).buttons]
        assert all(1 <= len(label) <= DISCORD_LABEL for label in labels), labels

        keyboard = pick_keyboard(
            Waits.new_token(),
            [(style.name, style.shown_title()) for style in STYLES.values()],
            default_style_label(),
        )
        for row in keyboard.inline_keyboard:
            for button in row:
                assert len(str(button.callback_data).encode()) <= TELEGRAM_CALLBACK_BYTES
