"""The translation catalogues (bot/locale) and the rules that pick one (bot/i18n): every
message translated in every shipped language with the English placeholders, the right plural
forms, the template and the compiled files in step with the code and the translations."""

from __future__ import annotations

import gettext
import re
from datetime import date
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
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
    found = set()
    for folder in ("bot", "adapters"):
        for _, _, message, _, _ in extract_from_dir(ROOT / folder):
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
