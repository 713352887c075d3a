"""flux_headshot on the local backend: FLUX.1 Kontext [dev] through the real loading code, on a
tiny random-weight model folder built in code (tests/tiny_models/flux.py), on the CPU."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import numpy as np
from PIL import Image

from backends.errors import InvalidRequest
from backends.local.components import MissingComponent, ModelPaths
from backends.local.faces import NoFaceFound
from backends.local.flux import KontextHeadshot, load, plain_pipeline
from backends.local.pipeline import LocalJob
from backends.local.runtime import Runtime
from backends.params import GenerationParams
from tests.tiny_models import flux as tiny_flux
from tests.tiny_models.faces import StandInFaces

BASE: dict[str, Any] = {
    "prompt": "professional headshot of a person, grey studio background",
    "seed": 7,
    "width": 64,
    "height": 64,
    "num_inference_steps": 2,
    "guidance_scale": 3.5,
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    tiny_flux.build(root)
    return root


@pytest.fixture(scope="module")
def pipeline(models_dir: Path) -> KontextHeadshot:
    return load(ModelPaths(models_dir), Runtime(device="cpu"), StandInFaces())


@pytest.fixture(scope="module")
def selfie() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8))


def make_job(selfie: Image.Image, **options: Any) -> LocalJob:
    return LocalJob(GenerationParams.create("flux_headshot", **{**BASE, **options}), selfie)


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


Render = Callable[..., np.ndarray]


@pytest.fixture(scope="module")
def render(pipeline: KontextHeadshot, selfie: Image.Image) -> Render:
    """The pixels of one generation from BASE with `options`, made once per module."""
    made: dict[tuple[tuple[str, Any], ...], np.ndarray] = {}

    def run(**options: Any) -> np.ndarray:
        key = tuple(sorted(options.items()))
        if key not in made:
            made[key] = pixels(pipeline.generate(make_job(selfie, **options)))
        return made[key]

    return run


@pytest.fixture(scope="module")
def baseline(render: Render) -> np.ndarray:
    return render()


def test_one_image_of_the_exact_size_even_off_the_16_pixel_grid(
    pipeline: KontextHeadshot, selfie: Image.Image
) -> None:
    job = make_job(selfie, width=72, height=88)
    images = pipeline.generate(job)
    assert [image.size for image in images] == [(72, 88)]
    arguments = pipeline.arguments(job)
    # Kontext would scale the size to a 1024² area; we ask for the next multiple of 16 and crop.
    assert (arguments["width"], arguments["height"], arguments["max_area"]) == (80, 96, 80 * 96)


def test_two_samples_are_the_images_of_seed_and_seed_plus_one(
    pipeline: KontextHeadshot, selfie: Image.Image, render: Render, baseline: np.ndarray
) -> None:
    # ModelsLab allows one image for flux_headshot; the pipeline itself makes any number.
    job = make_job(selfie)
    job = dataclasses.replace(job, params=dataclasses.replace(job.params, samples=2))
    arguments = pipeline.arguments(job)
    assert arguments["num_images_per_prompt"] == 2
    assert arguments["seeds"] == [7, 8]
    images = pipeline.generate(job)
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    batch = pixels(images)
    assert np.array_equal(batch[0], baseline[0])
    assert np.array_equal(batch[1], render(seed=8)[0])


def test_default_size_is_1024_square(pipeline: KontextHeadshot, selfie: Image.Image) -> None:
    params = GenerationParams.create("flux_headshot", prompt="a headshot", seed=1)
    arguments = pipeline.arguments(LocalJob(params, selfie))
    assert (arguments["width"], arguments["height"]) == (1024, 1024)
    assert arguments["output_size"] == (1024, 1024)
    assert arguments["max_area"] == 1024 * 1024
    assert (arguments["num_inference_steps"], arguments["guidance_scale"]) == (21, 3.5)


def test_same_seed_same_pixels_other_seed_other_pixels(
    pipeline: KontextHeadshot, selfie: Image.Image, render: Render, baseline: np.ndarray
) -> None:
    assert np.array_equal(pixels(pipeline.generate(make_job(selfie))), baseline)
    assert not np.array_equal(render(seed=8), baseline)


@pytest.mark.parametrize(
    ("knob", "value", "argument"),
    [
        ("prompt", "corporate portrait of a man in a suit", "prompt"),
        ("seed", 8, "seeds"),
        ("num_inference_steps", 3, "num_inference_steps"),
        ("guidance_scale", 6.0, "guidance_scale"),
        ("width", 80, "width"),
        ("height", 96, "height"),
    ],
)
def test_each_knob_reaches_the_pipeline(
    pipeline: KontextHeadshot,
    selfie: Image.Image,
    render: Render,
    baseline: np.ndarray,
    knob: str,
    value: object,
    argument: str,
) -> None:
    before = pipeline.arguments(make_job(selfie))
    after = pipeline.arguments(make_job(selfie, **{knob: value}))
    assert after[argument] != before[argument]
    changed = render(**{knob: value})
    if knob in ("width", "height"):
        size = {"width": 64, "height": 64, knob: value}
        assert changed.shape[1:3] == (size["height"], size["width"])
    else:
        assert changed.shape == baseline.shape
        assert not np.array_equal(changed, baseline)


def test_the_prompt_is_wrapped_in_an_editing_instruction(
    pipeline: KontextHeadshot, selfie: Image.Image
) -> None:
    prompt = pipeline.arguments(make_job(selfie, prompt="linkedin photo {not a field}"))["prompt"]
    assert "linkedin photo {not a field}" in prompt
    assert prompt.startswith("Turn this photo into")


def test_negative_prompt_is_left_out_by_design(
    pipeline: KontextHeadshot, selfie: Image.Image, baseline: np.ndarray
) -> None:
    # FLUX [dev] is guidance-distilled: no true CFG, so the negative prompt changes nothing.
    job = make_job(selfie, negative_prompt="cartoon, blurry")
    assert pipeline.arguments(job) == pipeline.arguments(make_job(selfie))
    assert np.array_equal(pixels(pipeline.generate(job)), baseline)


def test_a_selfie_without_a_face_is_refused(pipeline: KontextHeadshot) -> None:
    black = Image.new("RGB", (80, 96))
    with pytest.raises(NoFaceFound) as caught:
        pipeline.generate(make_job(black))
    assert isinstance(caught.value, InvalidRequest)


def test_fused_qkv_keeps_the_pixels(
    models_dir: Path, pipeline: KontextHeadshot, selfie: Image.Image, baseline: np.ndarray
) -> None:
    unfused = load(ModelPaths(models_dir), Runtime(device="cpu", fuse_qkv=False), StandInFaces())
    flags = [m.fused_projections for m in pipeline.transformer.modules() if hasattr(m, "to_q")]
    assert flags and all(flags)
    assert not any(m.fused_projections for m in unfused.transformer.modules() if hasattr(m, "to_q"))
    assert np.abs(pixels(unfused.generate(make_job(selfie))) - baseline).max() <= 2


def test_plain_pipeline_runs_the_same_settings_unfused(
    pipeline: KontextHeadshot, selfie: Image.Image, baseline: np.ndarray
) -> None:
    plain = plain_pipeline(pipeline)
    assert np.abs(pixels(plain(make_job(selfie))) - baseline).max() <= 2
    # Fusion is back on for our own pipeline afterwards.
    assert all(m.fused_projections for m in pipeline.transformer.modules() if hasattr(m, "to_q"))


def test_warm_up_runs_the_pipeline(pipeline: KontextHeadshot, monkeypatch: Any) -> None:
    calls: list[dict[str, Any]] = []
    original = type(pipeline.pipe).__call__

    def spy(pipe: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(pipe, **kwargs)

    monkeypatch.setattr(type(pipeline.pipe), "__call__", spy)
    pipeline.warm_up()
    assert len(calls) == 1
    assert calls[0]["num_inference_steps"] == 1


def test_a_missing_folder_names_it_and_the_download_command(tmp_path: Path) -> None:
    with pytest.raises(MissingComponent) as caught:
        load(ModelPaths(tmp_path), Runtime(device="cpu"), StandInFaces())
    message = str(caught.value)
    assert str(tmp_path / "flux_kontext") in message
    assert "headshot-bot models download --op flux_headshot" in message


def test_a_partial_download_names_the_missing_part(models_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(
        models_dir / "flux_kontext",
        tmp_path / "flux_kontext",
        ignore=shutil.ignore_patterns("transformer"),
    )
    with pytest.raises(MissingComponent) as caught:
        load(ModelPaths(tmp_path), Runtime(device="cpu"), StandInFaces())
    message = str(caught.value)
    assert str(tmp_path / "flux_kontext" / "transformer") in message
    assert "headshot-bot models download --op flux_headshot" in message
