"""The command definitions, the option checks, the text reader and the policy resolution."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.params import LIMITS, Operation
from bot.commands.layer import HANDLERS
from bot.commands.parse import EVERYONE, CommandError, check_options, parse_line
from bot.commands.spec import (
    COMMANDS,
    GENERATION_COMMANDS,
    PROMPT_BUDGET,
    Access,
    OptionType,
    find_command,
)
from bot.policy import Key, resolve
from bot.safety import SafetyLevel, banned_phrase_in
from bot.ui import Button, job_buttons
from storage.records import SettingRecord


def test_every_command_has_a_handler_and_every_handler_a_command() -> None:
    assert set(HANDLERS) == set(COMMANDS)


def test_admin_commands_need_a_moderator_or_an_owner_and_the_rest_do_not() -> None:
    for name, spec in COMMANDS.items():
        assert (spec.access != Access.EVERYONE) == name.startswith("admin ")
    owners_only = [name for name, spec in COMMANDS.items() if spec.access == Access.OWNER]
    assert owners_only == ["admin workers"]


@pytest.mark.parametrize("name", list(GENERATION_COMMANDS))
def test_generation_options_follow_the_documented_limits(name: str) -> None:
    spec = COMMANDS[name]
    limits = LIMITS[GENERATION_COMMANDS[name]]
    assert spec.option("samples").max_value == limits.max_samples  # type: ignore[union-attr]
    assert spec.option("width").max_value == limits.max_width  # type: ignore[union-attr]
    assert spec.option("height").max_value == limits.max_height  # type: ignore[union-attr]
    assert spec.option("safety_checker_type") is None  # moderators decide, not users
    assert spec.takes_selfie and spec.option("selfie").type == OptionType.IMAGE  # type: ignore[union-attr]
    has_pose = spec.option("pose_image") is not None
    assert has_pose == (GENERATION_COMMANDS[name] == Operation.AVATAR)


def test_names_are_found_with_either_separator() -> None:
    assert find_command("flux-headshot") is COMMANDS["flux_headshot"]
    assert find_command("  Admin   Banned-Words ADD ") is COMMANDS["admin banned-words add"]
    assert find_command("admin") is None


def test_a_line_fills_an_optional_style_only_with_a_style_then_the_prompt() -> None:
    styled = parse_line("/headshot Tech-Startup hoodie, laptop samples=2")
    plain = parse_line("/headshot hoodie and laptop")

    assert styled.options == {"style": "tech_startup", "prompt": "hoodie, laptop", "samples": 2}
    assert plain.options == {"prompt": "hoodie and laptop"}


def test_a_flag_is_set_by_its_own_name() -> None:
    assert parse_line("/admin jobs failed").options == {"failed": True}
    assert parse_line("/admin jobs failed=no").options == {"failed": False}


def test_usage_shows_what_goes_by_position_and_what_by_name() -> None:
    usage = COMMANDS["headshot"].usage
    assert usage.startswith("/headshot [style] [prompt…] [selfie_url=…] [samples=…]")


def test_a_line_reads_admin_subcommands_and_everyone() -> None:
    parsed = parse_line("/admin quota set everyone 10")
    assert parsed.spec.name == "admin quota set"
    assert parsed.options == {"user": EVERYONE, "per_day": 10}
    ban = parse_line("/admin ban 1234 posting spam, twice")
    assert ban.options == {"user": "1234", "reason": "posting spam, twice"}


def test_buttons_read_back_as_the_command_they_stand_for() -> None:
    for button in (*job_buttons("ab" * 16), Button("Next", "history", {"page": "3"})):
        parsed = parse_line(button.encode())
        assert parsed.spec.name == button.command
        assert {k: str(v) for k, v in parsed.options.items()} == dict(button.options)
        assert len(button.encode().encode()) <= 64  # Telegram's callback data limit


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"samples": True}, "samples must be a whole number."),
        ({"samples": "2.5"}, "samples must be a whole number (got “2.5”)."),
        ({"s_scale": "nan"}, "s_scale must be a number (got “nan”)."),
        ({"s_scale": 2.5}, "s_scale must be from 0 to 2 (got 2.5)."),
        ({"num_inference_steps": 22}, "num_inference_steps must be one of 21, 31, 41 (got 22)."),
        ({"selfie": "not bytes"}, "selfie must be an attached image."),
        ({"prompt": "x" * 1000}, f"prompt is too long: at most {PROMPT_BUDGET} characters."),
    ],
)
def test_option_checks_name_the_option_and_what_is_allowed(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(CommandError) as refused:
        check_options(COMMANDS["headshot"], options)
    assert str(refused.value) == message


def test_a_missing_required_option_shows_the_usage() -> None:
    with pytest.raises(CommandError) as refused:
        check_options(COMMANDS["admin grant"], {"user": "42"})
    assert str(refused.value) == "Missing credits. Usage: /admin grant <user> <credits>"


def test_a_user_option_refuses_what_cannot_be_an_id() -> None:
    with pytest.raises(CommandError):
        check_options(COMMANDS["admin ban"], {"user": "<script>"})
    with pytest.raises(CommandError):
        check_options(COMMANDS["admin ban"], {"user": "everyone"})  # only quota takes everyone


@given(st.text(max_size=200))
def test_any_typed_line_is_read_or_refused_with_a_message(text: str) -> None:
    try:
        parse_line("/headshot " + text)
    except CommandError as refused:
        assert str(refused)


def _row(community: int | None, user: int | None, key: Key, value: object) -> SettingRecord:
    return SettingRecord(community, user, str(key), value)


def test_the_narrowest_scope_wins_for_single_values() -> None:
    rows = [
        _row(None, None, Key.DAILY_QUOTA, 3),
        _row(1, None, Key.DAILY_QUOTA, 10),
        _row(None, 7, Key.DAILY_QUOTA, 20),
        _row(1, 7, Key.DAILY_QUOTA, 1),
        _row(1, None, Key.STYLE_DEFAULT, "studio"),
    ]

    def quota(user: int | None, community: int | None) -> int:
        policy = resolve(
            [r for r in rows if r.community_id in (None, community) and r.user_id in (None, user)],
            user_id=user,
            community_id=community,
            default_quota=5,
        )
        return policy.daily_quota

    assert quota(7, 1) == 1
    assert quota(7, 2) == 20
    assert quota(8, 1) == 10
    assert quota(8, 2) == 3
    assert resolve([], user_id=None, community_id=None, default_quota=5).daily_quota == 5


def test_words_disabled_operations_and_safety_add_up_across_scopes() -> None:
    rows = [
        _row(None, None, Key.BANNED_WORDS, ["gore"]),
        _row(1, None, Key.BANNED_WORDS, ["spam", "gore"]),
        _row(None, None, Key.DISABLED_OPERATIONS, ["avatar"]),
        _row(1, None, Key.DISABLED_OPERATIONS, ["facegen"]),
        _row(None, None, Key.SAFETY_LEVEL, "black"),
        _row(1, None, Key.SAFETY_LEVEL, "blur"),  # looser than global: ignored
    ]
    policy = resolve(rows, user_id=None, community_id=1, default_quota=5)

    assert policy.banned_words == ("gore", "spam")
    assert policy.disabled_operations == {"avatar", "facegen"}
    assert policy.safety_level == SafetyLevel.BLACK


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("GORE! everywhere", "gore"),
        ("a gorilla in a suit", None),
        ("Gôre", "gore"),
        ("blood   bath", "blood bath"),
        ("bloodbath", None),
        ("g\u200bore", "gore"),  # a zero-width space
        ("g\u00adore", "gore"),  # a soft hyphen
        ("g\u043ere", "gore"),  # a Cyrillic о
        ("g.o.r.e", "gore"),
        ("G 0 R E", "gore"),
    ],
)
def test_banned_phrases_match_whole_words_after_folding(prompt: str, expected: str | None) -> None:
    assert banned_phrase_in(prompt, ["gore", "blood bath"]) == expected


def test_replies_date_stamps_are_utc() -> None:
    from bot.replies import job_details
    from bot.ui import JobSummary

    summary = JobSummary(
        "f" * 32, "headshot", "succeeded", "studio", None, 1, datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    )
    assert "2026-01-02 03:04 UTC" in job_details(summary, ()).text


def test_a_prompt_within_the_budget_fits_every_style() -> None:
    from backends.params import GenerationParams
    from bot.styles import STYLES, compose

    for style in STYLES.values():
        for operation in Operation:
            options = compose(style, "y" * PROMPT_BUDGET, operation)
            GenerationParams.create(operation, **options)
