"""flux_headshot on the local backend: FLUX.1 Kontext [dev] through the real loading code, on a
tiny random-weight model folder built in code (tests/tiny_models/flux.py), on the CPU.

The tiny VAE's sample_size is 64, so the pipeline runs Kontext's resolutions scaled to a 64 px side
(64², 48 × 80, …); the sizes at the real side (1024) are checked on the functions it calls."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from PIL import Image

from backends.errors import InvalidRequest
from backends.local.components import MissingComponent, ModelPaths
from backends.local.faces import NoFaceFound
from backends.local.flux import (
    KontextHeadshot,
    generation_size,
    load,
    plain_pipeline,
    reference_buckets,
    reference_size,
    warmed_reference_sizes,
)
from backends.local.pipeline import LocalJob
from backends.local.runtime import Runtime
from backends.local.sizes import fit
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
    # 3:4, as phone cameras take them.
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (96, 72, 3), dtype=np.uint8))


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


@dataclasses.dataclass
class Call:
    """One call of the Kontext pipeline: its keyword arguments, the images it made (before
    they are fitted to the asked size), and the shapes of the tensors its transformer got at each
    step."""

    kwargs: dict[str, Any]
    generated: list[Image.Image] = dataclasses.field(default_factory=list)
    transformer_inputs: list[dict[str, tuple[int, ...]]] = dataclasses.field(default_factory=list)


@pytest.fixture
def spy(pipeline: KontextHeadshot, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Call]]:
    calls: list[Call] = []
    original = type(pipeline.pipe).__call__

    def call(pipe: Any, **kwargs: Any) -> Any:
        calls.append(Call(kwargs))
        output = original(pipe, **kwargs)
        calls[-1].generated = list(output.images)
        return output

    def inputs(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        shapes = {k: tuple(v.shape) for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        calls[-1].transformer_inputs.append(shapes)

    monkeypatch.setattr(type(pipeline.pipe), "__call__", call)
    handle = pipeline.pipe.transformer.register_forward_pre_hook(inputs, with_kwargs=True)
    yield calls
    handle.remove()


# The sizes at the real models' side (the VAE's sample_size, 1024 for FLUX): the functions the
# pipeline calls, checked without running anything at 1 MP.
@pytest.mark.parametrize(
    ("asked", "generated"),
    [
        ((1024, 1024), (1024, 1024)),
        ((2048, 2048), (1024, 1024)),
        ((512, 768), (832, 1248)),
        ((768, 1024), (880, 1184)),
        ((1920, 1080), (1392, 752)),
        ((72, 88), (944, 1104)),
    ],
)
def test_a_request_is_generated_at_the_nearest_kontext_resolution(
    asked: tuple[int, int], generated: tuple[int, int]
) -> None:
    assert generation_size(*asked, side=1024, multiple=16) == generated
    assert generated in PREFERRED_KONTEXT_RESOLUTIONS


def test_the_warmed_reference_buckets_are_the_kontext_resolutions_nearest_selfie_shapes() -> None:
    # 3:4, 4:5, 1:1 and 9:16, in that order; four shapes to compile on a GPU.
    assert reference_buckets() == [(880, 1184), (944, 1104), (1024, 1024), (752, 1392)]
    assert set(reference_buckets()) <= set(PREFERRED_KONTEXT_RESOLUTIONS)
    assert warmed_reference_sizes(side=1024, multiple=16) == reference_buckets()


@pytest.mark.parametrize(
    ("selfie_size", "bucket"),
    [
        ((3024, 4032), (880, 1184)),  # a phone photo, 3:4
        ((1080, 1920), (752, 1392)),  # a full-screen one, 9:16
        ((1080, 1350), (944, 1104)),  # 4:5
        ((900, 900), (1024, 1024)),
        ((4032, 3024), (1024, 1024)),  # landscape: the square is the nearest warmed bucket
        ((1920, 1080), (1024, 1024)),
        ((500, 1000), (752, 1392)),
    ],
)
def test_a_selfie_is_fitted_to_the_nearest_warmed_bucket_at_the_real_side(
    selfie_size: tuple[int, int], bucket: tuple[int, int]
) -> None:
    assert reference_size(selfie_size, side=1024, multiple=16) == bucket


def tokens(size: tuple[int, int]) -> int:
    """The transformer's sequence length for an image of `size`: 8× VAE, 2×2 latent patches."""
    return (size[0] // 16) * (size[1] // 16)


# What the tiny pipeline runs at (its VAE's side is 64) and the size it delivers.
@pytest.mark.parametrize(
    ("asked", "generated"),
    [
        ((1024, 1024), (64, 64)),
        ((2048, 2048), (64, 64)),
        ((72, 88), (64, 64)),
        ((64, 128), (48, 96)),
        ((1920, 1080), (80, 48)),
    ],
)
def test_the_pipeline_generates_at_the_bucket_and_delivers_the_asked_size(
    pipeline: KontextHeadshot,
    selfie: Image.Image,
    spy: list[Call],
    asked: tuple[int, int],
    generated: tuple[int, int],
) -> None:
    assert pipeline.side == 64
    assert generated == generation_size(*asked, side=64, multiple=16)
    job = make_job(selfie, width=asked[0], height=asked[1], num_inference_steps=1)
    arguments = pipeline.arguments(job)
    assert (arguments["width"], arguments["height"]) == generated
    assert arguments["max_area"] == generated[0] * generated[1]
    assert arguments["output_size"] == asked
    images = pipeline.generate(job)
    assert [image.size for image in images] == [asked]
    (call,) = spy
    # Kontext kept the size (max_area) and made the image at it; the transformer saw its tokens
    # beside the reference's (the 3:4 selfie's bucket, 48 × 80 at this side).
    assert (call.kwargs["width"], call.kwargs["height"]) == generated
    assert [image.size for image in call.generated] == [generated]
    # Brought to the asked size by cover-resize and centre crop, not stretched.
    assert np.array_equal(np.asarray(images[0]), np.asarray(fit(call.generated[0], asked)))
    assert {inputs["hidden_states"][1] for inputs in call.transformer_inputs} == {
        tokens(generated) + tokens((48, 80))
    }


@pytest.mark.parametrize(
    ("selfie_size", "bucket"),
    [
        ((72, 96), (48, 80)),  # 3:4
        ((54, 96), (48, 80)),  # 9:16: at side 64 its bucket rounds to 3:4's size
        ((80, 100), (64, 64)),  # 4:5: rounds to the square's
        ((96, 72), (64, 64)),  # landscape
        ((64, 64), (64, 64)),
    ],
)
def test_the_selfie_is_cover_cropped_to_its_bucket_and_not_resized_again(
    pipeline: KontextHeadshot,
    spy: list[Call],
    selfie_size: tuple[int, int],
    bucket: tuple[int, int],
) -> None:
    rng = np.random.default_rng(5)
    width, height = selfie_size
    selfie = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    job = make_job(selfie, num_inference_steps=1)
    assert pipeline.arguments(job)["reference_size"] == bucket
    pipeline.generate(job)
    (call,) = spy
    assert call.kwargs["_auto_resize"] is False
    reference = call.kwargs["image"]
    assert reference.size == bucket
    # A centre crop of the selfie scaled to cover the bucket, not a squashed selfie.
    assert np.array_equal(np.asarray(reference), np.asarray(fit(selfie, bucket)))
    # Kontext encoded it at that size: the transformer's sequence is the output's and its tokens.
    assert {inputs["hidden_states"][1] for inputs in call.transformer_inputs} == {
        tokens((64, 64)) + tokens(bucket)
    }


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


def test_defaults_are_modelslabs_and_1024_square_is_generated_at_the_side(
    pipeline: KontextHeadshot, selfie: Image.Image
) -> None:
    # A value a user can set keeps ModelsLab's documented default (the styles choose 2.5 for
    # guidance, as FLUX.1 Kontext's examples use).
    params = GenerationParams.create("flux_headshot", prompt="a headshot", seed=1)
    arguments = pipeline.arguments(LocalJob(params, selfie))
    assert arguments["output_size"] == (1024, 1024)
    assert (arguments["width"], arguments["height"]) == (64, 64)
    assert arguments["max_area"] == 64 * 64
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
        ("width", 80, "output_size"),
        ("height", 96, "output_size"),
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


def test_warm_up_runs_each_warmed_reference_size_at_the_default_output(
    pipeline: KontextHeadshot, spy: list[Call]
) -> None:
    pipeline.warm_up()
    # The reference sizes of selfies of the warmed shapes (3:4, 4:5, 1:1, 9:16) at this side.
    selfie_buckets = {
        pipeline.arguments(make_job(Image.new("RGB", size)))["reference_size"]
        for size in ((30, 40), (40, 50), (50, 50), (45, 80))
    }
    assert selfie_buckets == {(48, 80), (64, 64)}
    default = pipeline.arguments(
        LocalJob(
            GenerationParams.create("flux_headshot", prompt="a headshot", seed=1),
            Image.new("RGB", (8, 8)),
        )
    )
    assert sorted(call.kwargs["image"].size for call in spy) == sorted(selfie_buckets)
    for call in spy:
        assert (call.kwargs["width"], call.kwargs["height"]) == (
            default["width"],
            default["height"],
        )
        assert call.kwargs["max_area"] == default["max_area"]
        assert call.kwargs["num_inference_steps"] == 1


def transformer_shapes(calls: list[Call]) -> set[tuple[tuple[str, tuple[int, ...]], ...]]:
    return {tuple(sorted(inputs.items())) for call in calls for inputs in call.transformer_inputs}


def test_a_default_request_meets_no_shape_the_warm_up_did_not_compile(
    pipeline: KontextHeadshot, spy: list[Call]
) -> None:
    pipeline.warm_up()
    warmed = transformer_shapes(spy)
    rng = np.random.default_rng(9)
    for width, height in (
        (72, 96),
        (54, 96),
        (80, 100),
        (70, 70),
        (96, 72),
        (128, 72),
        (64, 96),
        (40, 120),
        (133, 207),
    ):
        spy.clear()
        selfie = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        params = GenerationParams.create(
            "flux_headshot", prompt="a headshot", seed=2, num_inference_steps=1
        )
        assert [image.size for image in pipeline.generate(LocalJob(params, selfie))] == [
            (1024, 1024)
        ]
        assert transformer_shapes(spy) <= warmed, (width, height)
    # Another output size is another shape: the check above can tell.
    spy.clear()
    pipeline.generate(
        make_job(Image.new("RGB", (72, 96), "white"), width=64, height=128, num_inference_steps=1)
    )
    assert not transformer_shapes(spy) <= warmed


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
