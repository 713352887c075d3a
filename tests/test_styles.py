"""Style presets: the shipped data is valid, composition is clean and literal, names are forgiving,
and broken data fails loudly with the style and field named."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from backends.params import MAX_PROMPT_CHARS, GenerationParams, Operation, ParameterError
from bot import styles as styles_module
from bot.styles import (
    DEFAULT_STYLE,
    STYLES,
    Style,
    StyleDataError,
    UnknownStyle,
    compose,
    get_style,
    load_styles,
)

REQUIRED = (
    "corporate",
    "linkedin",
    "studio",
    "outdoor",
    "creative",
    "tech_startup",
    "black_and_white",
    "casual",
    "executive",
)
OPERATIONS = [str(op) for op in Operation]
STRAY = re.compile(r",\s*,|\s{2,}|^[\s,]|[\s,]$|\s,|,\s*[.;:!?]")

# Each method's reference settings within ModelsLab's limits (README, "Settings beside the
# references"): IP-Adapter-FaceID's card and generate() (30 steps, read 31), InstantID's
# app-multicontrolnet.py (30 steps, read 31), Kontext's docs example (guidance 2.5) and
# FluxKontextPipeline's 28 steps, capped at ModelsLab's 26.
_FACEID = {"num_inference_steps": 31, "guidance_scale": 7.5, "s_scale": 1.0}
REFERENCE_VALUES = {
    "headshot": _FACEID,
    "facegen": _FACEID,
    "avatar": {
        "num_inference_steps": 31,
        "guidance_scale": 5.0,
        "identitynet_strength_ratio": 0.8,
        "adapter_strength_ratio": 0.8,
        "pose_strength": 0.4,
        "canny_strength": 0.4,
    },
    "flux_headshot": {"num_inference_steps": 26, "guidance_scale": 2.5},
}

VALID = """
[styles.alpha]
title = "Alpha"
description = "A test style"
prompt = "headshot of a person, {details}, studio light"
negative_prompt = "blurry, cartoon"

[styles.alpha.defaults.headshot]
guidance_scale = 5.0
"""


def _broken(tmp_path: Path, text: str) -> str:
    path = tmp_path / "styles.toml"
    path.write_text(text, encoding="utf-8")
    return path.read_text(encoding="utf-8")


# --- the shipped data ---------------------------------------------------------------------------


def test_the_shipped_presets_are_all_there_in_file_order() -> None:
    assert len(STYLES) >= 8
    assert set(REQUIRED) <= set(STYLES)
    assert DEFAULT_STYLE == "corporate" and DEFAULT_STYLE in STYLES
    text = resources.files("bot").joinpath("styles.toml").read_text(encoding="utf-8")
    assert list(STYLES) == list(tomllib.loads(text)["styles"])


@pytest.mark.parametrize("name", list(STYLES))
def test_every_style_is_complete_and_sensible(name: str) -> None:
    style = STYLES[name]
    assert isinstance(style, Style) and style.name == name
    assert re.fullmatch(r"[a-z][a-z0-9_]*", name)
    assert style.title.strip() and "\n" not in style.title
    assert style.description.strip() and "\n" not in style.description
    assert len(style.description) <= 80
    assert style.prompt.count("{details}") == 1
    negative = style.negative_prompt.lower()
    for word in ("deformed", "blurry", "extra fingers", "watermark", "text"):
        assert word in negative, (name, word)
    # Every preset is a photograph.
    assert "cartoon" in negative and "illustration" in negative
    assert set(style.defaults) <= set(OPERATIONS)


@pytest.mark.parametrize("name", list(STYLES))
@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_style_resolves_the_references_values(name: str, operation: str) -> None:
    params = GenerationParams.create(operation, **compose(STYLES[name], None, operation))
    expected = REFERENCE_VALUES[operation]
    assert {key: getattr(params, key) for key in expected} == expected


@pytest.mark.parametrize("name", list(STYLES))
def test_no_style_asks_for_a_size_the_gpu_worker_does_not_warm_up(name: str) -> None:
    # The local GPU compiles its pipelines for the default sizes at start; a preset size would
    # compile them again during its users' first jobs.
    for operation, options in STYLES[name].defaults.items():
        assert "width" not in options and "height" not in options, (name, operation)


def test_black_and_white_refuses_colour() -> None:
    negative = [p.strip() for p in STYLES["black_and_white"].negative_prompt.split(",")]
    assert "color" in negative
    assert "black and white" in STYLES["black_and_white"].prompt


def test_styles_and_their_defaults_are_read_only() -> None:
    style = STYLES[DEFAULT_STYLE]
    with pytest.raises(TypeError):
        STYLES["x"] = style  # type: ignore[index]
    with pytest.raises(TypeError):
        style.defaults["headshot"]["guidance_scale"] = 1.0  # type: ignore[index]


# --- composition --------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("name", list(STYLES))
@pytest.mark.parametrize("details", [None, "", "smiling, short brown hair, glasses"])
def test_every_style_composes_into_valid_params(
    name: str, operation: str, details: str | None
) -> None:
    style = STYLES[name]
    options = compose(style, details, operation)
    params = GenerationParams.create(operation, **options)
    assert params.prompt == options["prompt"]
    assert params.negative_prompt == style.negative_prompt
    for key, value in style.defaults.get(operation, {}).items():
        assert options[key] == value
        got = getattr(params, key)
        assert got == (tuple(value) if isinstance(value, list) else value)
    if details:
        assert details in params.prompt
    assert "{" not in params.prompt and "}" not in params.prompt
    assert not STRAY.search(params.prompt), params.prompt


def test_compose_accepts_the_operation_enum_and_refuses_an_unknown_one() -> None:
    style = get_style("studio")
    assert compose(style, "x", Operation.AVATAR) == compose(style, "x", "avatar")
    with pytest.raises(ParameterError) as err:
        compose(style, "x", "painting")
    assert err.value.field == "operation"


def test_options_do_not_share_state_between_calls() -> None:
    style = get_style("corporate")
    first = compose(style, "a", "headshot")
    first["guidance_scale"] = 1.0
    assert (
        compose(style, "a", "headshot")["guidance_scale"]
        == style.defaults["headshot"]["guidance_scale"]
    )


@pytest.mark.parametrize(
    "details", ["{x}", "{0}", "{details}", "{0.__class__}", "{}", "{{x}}", "}{", "{name!r:>9}"]
)
def test_braces_in_details_stay_literal(details: str) -> None:
    style = get_style("corporate")
    prompt = compose(style, f"wearing {details} badge", "headshot")["prompt"]
    assert f"wearing {details} badge" in prompt
    before, after = style.prompt.split("{details}")
    assert prompt == before + f"wearing {details} badge" + after


@pytest.mark.parametrize("details", [None, "", "   ", "\n\t ", " , ", ",,;"])
@pytest.mark.parametrize("name", list(STYLES))
def test_blank_details_leave_no_stray_punctuation(name: str, details: str | None) -> None:
    prompt = compose(STYLES[name], details, "headshot")["prompt"]
    assert prompt
    assert not STRAY.search(prompt), prompt
    assert "{details}" not in prompt


def test_the_slot_vanishes_cleanly_wherever_it_sits() -> None:
    for template, expected in [
        ("{details}, headshot, studio", "headshot, studio"),
        ("headshot, studio, {details}", "headshot, studio"),
        ("headshot, {details}, studio", "headshot, studio"),
        ("headshot of {details} person", "headshot of person"),
        ("headshot, {details}.", "headshot."),
    ]:
        style = Style("t", "T", "d", template, "n", {})
        assert compose(style, "  ", "headshot")["prompt"] == expected, template


def test_details_are_stripped_and_whitespace_collapsed() -> None:
    style = get_style("casual")
    prompt = compose(style, "  red \n\n scarf\t and   hat  ", "facegen")["prompt"]
    assert ", red scarf and hat, " in prompt
    assert compose(style, " , red scarf, ", "facegen")["prompt"] == prompt.replace(" and hat", "")


def test_a_very_long_detail_is_refused_by_params_not_truncated() -> None:
    style = get_style("executive")
    details = "x" * 900
    options = compose(style, details, "headshot")
    assert details in options["prompt"]
    assert len(options["prompt"]) > MAX_PROMPT_CHARS
    with pytest.raises(ParameterError) as err:
        GenerationParams.create("headshot", **options)
    assert err.value.field == "prompt"
    assert str(MAX_PROMPT_CHARS) in str(err.value)


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Black-and-white", "black_and_white"),
        ("TECH STARTUP", "tech_startup"),
        ("  tech-startup  ", "tech_startup"),
        ("Tech_Startup", "tech_startup"),
        ("black and  white", "black_and_white"),
        ("LinkedIn", "linkedin"),
        ("corporate", "corporate"),
    ],
)
def test_names_are_normalised(given: str, expected: str) -> None:
    assert get_style(given) is STYLES[expected]


@pytest.mark.parametrize("given", ["anime", "", "  ", "corporate!", "x" * 200])
def test_an_unknown_style_lists_the_known_ones(given: str) -> None:
    with pytest.raises(UnknownStyle) as err:
        get_style(given)
    message = str(err.value)
    assert message.startswith("unknown style ")
    assert message.endswith("choose one of " + ", ".join(STYLES))
    assert isinstance(err.value, ValueError)
    assert len(message) < 120 + len(", ".join(STYLES))


def test_unknown_style_message_names_the_input() -> None:
    with pytest.raises(UnknownStyle, match=r"^unknown style 'x': choose one of corporate, "):
        get_style("x")


# --- loading ------------------------------------------------------------------------------------


def test_a_valid_document_loads() -> None:
    loaded = load_styles(VALID)
    assert list(loaded) == ["alpha"]
    alpha = loaded["alpha"]
    assert alpha.title == "Alpha" and alpha.defaults == {"headshot": {"guidance_scale": 5.0}}
    assert compose(alpha, None, "headshot")["prompt"] == "headshot of a person, studio light"


def test_lists_in_defaults_become_tuples() -> None:
    text = VALID + '\n[styles.alpha.defaults.avatar]\ncontrolnet_selection = ["pose", "canny"]\n'
    loaded = load_styles(text)
    assert loaded["alpha"].defaults["avatar"]["controlnet_selection"] == ("pose", "canny")


@pytest.mark.parametrize(
    ("replace", "by", "fragments"),
    [
        ('title = "Alpha"\n', "", ["'alpha'", "'title'", "missing"]),
        ('negative_prompt = "blurry, cartoon"\n', "", ["'alpha'", "'negative_prompt'"]),
        ("{details}, studio", "studio", ["'alpha'", "'prompt'", "{details}"]),
        ("{details}, studio", "{details}, {details}, studio", ["'alpha'", "'prompt'", "found 2"]),
        ("{details}, studio", "{details}, {lighting}", ["'alpha'", "'prompt'", "curly"]),
        ('"A test style"', '"' + "d" * 81 + '"', ["'alpha'", "'description'", "80"]),
        ('"A test style"', '"""two\nlines"""', ["'alpha'", "'description'", "one line"]),
        ('title = "Alpha"', "title = 3", ["'alpha'", "'title'", "string"]),
        ('title = "Alpha"', 'title = "Alpha"\ncolour = "red"', ["'alpha'", "colour"]),
        ("guidance_scale = 5.0", "guidance_scale = 9.5", ["'alpha'", "guidance_scale", "7.5"]),
        ("guidance_scale = 5.0", "num_inference_steps = 25", ["'alpha'", "num_inference_steps"]),
        ("guidance_scale = 5.0", "width = 1024", ["'alpha'", "defaults.headshot.width", "512"]),
        ("guidance_scale = 5.0", "pose_strength = 0.5", ["'alpha'", "pose_strength"]),
        ("guidance_scale = 5.0", "colour = 1", ["'alpha'", "colour"]),
        ("guidance_scale = 5.0", "samples = 2", ["'alpha'", "samples", "not a style option"]),
        ("guidance_scale = 5.0", 'prompt = "y"', ["'alpha'", "prompt", "not a style option"]),
        ("guidance_scale = 5.0", "safety_checker = false", ["'alpha'", "safety_checker"]),
        ("defaults.headshot]", "defaults.painting]", ["'alpha'", "defaults.painting"]),
        ("[styles.alpha]", "[styles.Alpha-1]", ["'Alpha-1'", "lowercase"]),
    ],
)
def test_broken_data_names_the_style_and_field(
    tmp_path: Path, replace: str, by: str, fragments: list[str]
) -> None:
    assert replace in VALID
    text = _broken(tmp_path, VALID.replace(replace, by, 1))
    with pytest.raises(StyleDataError) as err:
        load_styles(text, source=str(tmp_path / "styles.toml"))
    message = str(err.value)
    assert message.startswith(str(tmp_path / "styles.toml"))
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_second_broken_style_is_named_not_the_first(tmp_path: Path) -> None:
    second = VALID.replace("alpha", "beta").replace("guidance_scale = 5.0", "s_scale = 3.0")
    with pytest.raises(StyleDataError, match=r"'beta'.*s_scale"):
        load_styles(_broken(tmp_path, VALID + second))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[styles.alpha\n", "not valid TOML"),
        ("", "no [styles"),
        ('[other]\nx = 1\n[styles.a]\ntitle = "A"\n', "other"),
        ('styles = "x"\n', "no [styles"),
    ],
)
def test_broken_documents_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(StyleDataError, match=re.escape(fragment)):
        load_styles(text)


def test_a_broken_shipped_file_fails_the_import(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def joinpath(self, _name: str) -> Broken:
            return self

        def read_text(self, encoding: str = "utf-8") -> str:
            return VALID.replace("{details}, ", "")

    monkeypatch.setattr(styles_module.resources, "files", lambda _package: Broken())
    with pytest.raises(StyleDataError, match=r"bot/styles.toml: style 'alpha': field 'prompt'"):
        styles_module._load_shipped()


def test_the_shipped_file_without_the_default_style_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoDefault:
        def joinpath(self, _name: str) -> NoDefault:
            return self

        def read_text(self, encoding: str = "utf-8") -> str:
            return VALID

    monkeypatch.setattr(styles_module.resources, "files", lambda _package: NoDefault())
    with pytest.raises(StyleDataError, match="default style 'corporate'"):
        styles_module._load_shipped()
