"""headshot / facegen on the local backend: IP-Adapter-FaceID-PlusV2 on SD1.5, run on the CPU
through the real loading code over tiny random-weight folders (tests/tiny_models/sd15.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import numpy as np
import torch
from PIL import Image

from backends.errors import InvalidRequest
from backends.local import headshot
from backends.local.components import MissingComponent, ModelPaths
from backends.local.faces import NoFaceFound
from backends.local.pipeline import LocalJob, loader_for
from backends.local.runtime import Runtime
from backends.params import GenerationParams, Operation
from tests.tiny_models import sd15
from tests.tiny_models.faces import StandInFaces

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH, HEIGHT = 64, 96
BASE: dict[str, Any] = {"prompt": "a professional headshot", "seed": 7}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelPaths:
    root = tmp_path_factory.mktemp("models")
    sd15.build(root)
    return ModelPaths(root)


@pytest.fixture(scope="module")
def pipeline(models: ModelPaths) -> headshot.FaceIDPipeline:
    return headshot.load(models, Runtime(device="cpu"), StandInFaces())


@pytest.fixture(scope="module")
def unfused(models: ModelPaths) -> headshot.FaceIDPipeline:
    return headshot.load(models, Runtime(device="cpu", fuse_qkv=False), StandInFaces())


@pytest.fixture(scope="module")
def selfie() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (128, 96, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def make_job(selfie: Image.Image, **options: Any) -> LocalJob:
    options = {**BASE, "width": WIDTH, "height": HEIGHT, **options}
    operation = options.pop("operation", Operation.HEADSHOT)
    return LocalJob(params=GenerationParams.create(operation, **options), face=selfie)


@pytest.fixture(scope="module")
def generate(
    pipeline: headshot.FaceIDPipeline, selfie: Image.Image
) -> Callable[..., list[np.ndarray]]:
    """Generate (once per set of options) and return the images as arrays."""
    cache: dict[tuple[tuple[str, Any], ...], list[np.ndarray]] = {}

    def run(**options: Any) -> list[np.ndarray]:
        key = tuple(sorted(options.items()))
        if key not in cache:
            images = pipeline.generate(make_job(selfie, **options))
            cache[key] = [np.asarray(image, dtype=np.int16) for image in images]
        return cache[key]

    return run


def test_one_pipeline_serves_headshot_and_facegen(pipeline: headshot.FaceIDPipeline) -> None:
    assert loader_for(Operation.HEADSHOT) is headshot.load
    assert loader_for(Operation.FACEGEN) is headshot.load
    assert set(pipeline.operations) == {Operation.HEADSHOT, Operation.FACEGEN}


@pytest.mark.parametrize(
    ("operation", "samples"), [(Operation.HEADSHOT, 1), (Operation.FACEGEN, 2)]
)
def test_output_count_and_size(
    pipeline: headshot.FaceIDPipeline, selfie: Image.Image, operation: Operation, samples: int
) -> None:
    images = pipeline.generate(make_job(selfie, operation=operation, samples=samples))
    assert len(images) == samples
    assert all(image.size == (WIDTH, HEIGHT) for image in images)


def test_width_and_height_default_to_512_by_768(
    pipeline: headshot.FaceIDPipeline, selfie: Image.Image
) -> None:
    job = LocalJob(GenerationParams.create(Operation.HEADSHOT, **BASE), face=selfie)
    arguments = pipeline.arguments(job)
    assert (arguments["width"], arguments["height"]) == (512, 768)


def test_same_seed_same_pixels_other_seed_other_pixels(
    pipeline: headshot.FaceIDPipeline, selfie: Image.Image, generate: Callable[..., Any]
) -> None:
    again = pipeline.generate(make_job(selfie))
    assert np.array_equal(np.asarray(again[0], dtype=np.int16), generate()[0])
    assert not np.array_equal(generate(seed=8)[0], generate()[0])


def test_sample_i_of_a_batch_is_the_image_of_seed_plus_i(generate: Callable[..., Any]) -> None:
    # To the bit: each image is a pass of its own, so the number of samples cannot change the
    # kernels' order of additions (one batch did, by a level in a pixel here and there).
    for seed in (7, 11):
        batch = generate(seed=seed, samples=2)
        assert np.array_equal(batch[0], generate(seed=seed)[0])
        assert np.array_equal(batch[1], generate(seed=seed + 1)[0])


# knob, changed value, the arguments() entries it must change.
KNOBS = [
    ("prompt", "a watercolour portrait of an astronaut", {"prompt"}),
    ("negative_prompt", "blurry, low quality", {"negative_prompt"}),
    ("width", 80, {"width"}),
    ("height", 72, {"height"}),
    ("num_inference_steps", 31, {"num_inference_steps"}),
    ("guidance_scale", 7.5, {"guidance_scale"}),
    ("s_scale", 0.3, {"shortcut_scale"}),
    ("samples", 2, {"num_images_per_prompt", "seeds"}),
    ("seed", 1234, {"seeds"}),
]


@pytest.mark.parametrize(("knob", "value", "entries"), KNOBS, ids=[k[0] for k in KNOBS])
def test_each_knob_reaches_its_argument_and_the_pixels(
    pipeline: headshot.FaceIDPipeline,
    selfie: Image.Image,
    generate: Callable[..., Any],
    knob: str,
    value: Any,
    entries: set[str],
) -> None:
    base = pipeline.arguments(make_job(selfie))
    changed = pipeline.arguments(make_job(selfie, **{knob: value}))
    assert {name for name in base if base[name] != changed[name]} == entries
    before, after = generate(), generate(**{knob: value})
    assert len(before) != len(after) or not all(
        a.shape == b.shape and np.array_equal(a, b) for a, b in zip(before, after, strict=True)
    )


def test_arguments_record_the_whole_run(
    pipeline: headshot.FaceIDPipeline, selfie: Image.Image
) -> None:
    arguments = pipeline.arguments(make_job(selfie, samples=2, s_scale=1.5))
    assert arguments == {
        "prompt": BASE["prompt"],
        "negative_prompt": None,
        "width": WIDTH,
        "height": HEIGHT,
        "num_inference_steps": 21,
        "guidance_scale": 5.0,
        "num_images_per_prompt": 2,
        "seeds": [7, 8],
        "shortcut_scale": 1.5,
        "ip_adapter_scale": 1.0,
    }


def test_guidance_scale_one_runs_without_the_unconditional_half(
    generate: Callable[..., Any],
) -> None:
    images = generate(guidance_scale=1.0)
    assert len(images) == 1
    assert images[0].shape == (HEIGHT, WIDTH, 3)


def test_the_shortcut_is_on_and_scaled(
    pipeline: headshot.FaceIDPipeline, selfie: Image.Image
) -> None:
    pipeline.generate(make_job(selfie, s_scale=0.3))
    projection = pipeline.unet.encoder_hid_proj.image_projection_layers[0]
    assert projection.shortcut is True
    assert float(projection.shortcut_scale) == pytest.approx(0.3)


def test_no_face_is_a_user_error(pipeline: headshot.FaceIDPipeline) -> None:
    black = Image.new("RGB", (96, 128))
    with pytest.raises(NoFaceFound) as caught:
        pipeline.generate(make_job(black))
    assert isinstance(caught.value, InvalidRequest)


def test_faceid_gets_the_normalised_embedding_it_was_trained_on(
    pipeline: headshot.FaceIDPipeline, selfie: Image.Image
) -> None:
    # The stand-in gives raw vectors as long as an ArcFace recogniser's (20-30); the adapter's
    # projection must see the card's `normed_embedding`, of length 1.
    raw = StandInFaces().analyse(selfie).embedding
    assert 20 <= float(np.linalg.norm(raw)) <= 30
    received: list[torch.Tensor] = []

    def record(_module: Any, args: tuple[Any, ...]) -> None:
        received.append(args[0][0].detach().clone())

    hook = pipeline.unet.encoder_hid_proj.register_forward_pre_hook(record)
    try:
        pipeline.generate(make_job(selfie, num_inference_steps=21))
    finally:
        hook.remove()
    assert received
    # [unconditional zeros, the face] with guidance: the face row is the unit vector.
    face = received[0].reshape(2, -1)[1].float()
    assert float(face.norm()) == pytest.approx(1.0, abs=1e-3)
    expected = torch.from_numpy(raw / np.linalg.norm(raw)).float()
    assert torch.allclose(face, expected, atol=1e-3)
    assert float(received[0].reshape(2, -1)[0].abs().max()) == 0.0


def test_the_model_cards_scheduler_and_vae(
    pipeline: headshot.FaceIDPipeline, models: ModelPaths
) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler

    scheduler = pipeline.pipe.scheduler
    assert isinstance(scheduler, DDIMScheduler)
    card = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }
    assert {name: scheduler.config[name] for name in card} == card
    # sd-vae-ft-mse's folder, not a VAE inside the SD1.5 folder (the download fetches none).
    assert not (models.folder("sd15") / "vae").exists()
    expected = AutoencoderKL.from_pretrained(models.folder("sd15_vae")).state_dict()
    loaded = pipeline.pipe.vae.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in expected.items())


@pytest.mark.parametrize(
    "component", ["sd15", "sd15_vae", "clip_image_encoder", "ip_adapter_faceid"]
)
def test_a_missing_component_is_named_before_anything_loads(
    models: ModelPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, component: str
) -> None:
    from diffusers import ModelMixin

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("loaded a model before checking every folder")

    monkeypatch.setattr(ModelMixin, "from_pretrained", no_loading)
    absent = tmp_path / "absent"
    paths = ModelPaths(models.root, {component: absent})
    with pytest.raises(MissingComponent) as caught:
        headshot.load(paths, Runtime(device="cpu"), StandInFaces())
    assert str(absent) in caught.value.message
    assert "headshot-bot models download --op headshot" in caught.value.message


def test_the_original_checkpoint_loads_through_load_ip_adapter(
    pipeline: headshot.FaceIDPipeline, models: ModelPaths
) -> None:
    checkpoint = torch.load(
        models.folder("ip_adapter_faceid") / headshot.FACEID_FILE, weights_only=True
    )
    clip_width = pipeline.pipe.image_encoder.config.hidden_size
    expected = sd15.faceid_projection(sd15.CROSS_ATTENTION_DIM, clip_width).state_dict()
    loaded = pipeline.unet.encoder_hid_proj.image_projection_layers[0].state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor.half().float()), name
    processors = [
        (name, processor)
        for name, processor in pipeline.unet.attn_processors.items()
        if not name.startswith("encoder_hid_proj")
    ]
    adapted = 0
    for index, (name, processor) in enumerate(processors):
        if name.endswith("attn2.processor"):
            weight = checkpoint["ip_adapter"][f"{index}.to_k_ip.weight"].float()
            assert torch.equal(processor.to_k_ip[0].weight, weight), name
            adapted += 1
    assert adapted == 4  # one cross-attention down, one in the middle, two up


def test_the_faceid_lora_is_applied(models: ModelPaths, unfused: headshot.FaceIDPipeline) -> None:
    checkpoint = torch.load(
        models.folder("ip_adapter_faceid") / headshot.FACEID_FILE, weights_only=True
    )
    first = unfused.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    lora_down = checkpoint["ip_adapter"]["0.to_q_lora.down.weight"].float()
    assert torch.equal(first.lora_A["faceid_0"].weight, lora_down)


def test_fused_qkv_keeps_the_adapter_and_the_pixels(
    unfused: headshot.FaceIDPipeline,
    pipeline: headshot.FaceIDPipeline,
    selfie: Image.Image,
    generate: Callable[..., Any],
) -> None:
    from diffusers.models.attention_processor import (
        FusedAttnProcessor2_0,
        IPAdapterAttnProcessor2_0,
    )

    kinds = {
        name.rsplit(".", 2)[-2]: type(processor)
        for name, processor in pipeline.unet.attn_processors.items()
        if not name.startswith("encoder_hid_proj")
    }
    assert kinds == {"attn1": FusedAttnProcessor2_0, "attn2": IPAdapterAttnProcessor2_0}
    plain = np.asarray(unfused.generate(make_job(selfie))[0], dtype=np.int16)
    assert np.abs(plain - generate()[0]).max() <= 2


def test_plain_pipeline_runs_the_same_settings(
    pipeline: headshot.FaceIDPipeline, selfie: Image.Image, generate: Callable[..., Any]
) -> None:
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    run = headshot.plain_pipeline(pipeline)
    images = run(make_job(selfie))
    assert len(images) == 1
    assert np.abs(np.asarray(images[0], dtype=np.int16) - generate()[0]).max() <= 2
    # Building the baseline leaves the fast pipeline as it was.
    attn1 = pipeline.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert isinstance(attn1.processor, FusedAttnProcessor2_0)


def test_warm_up_runs_the_pipeline_once(
    pipeline: headshot.FaceIDPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    original = type(pipeline.pipe).__call__

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["num_inference_steps"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipeline.pipe), "__call__", counted)
    pipeline.warm_up()
    assert calls == [1]


def test_no_safety_checker_is_pretended(
    pipeline: headshot.FaceIDPipeline, selfie: Image.Image
) -> None:
    arguments = pipeline.arguments(make_job(selfie, safety_checker_type="blur"))
    assert arguments == pipeline.arguments(make_job(selfie))
    assert pipeline.pipe.safety_checker is None


def test_a_checkpoint_with_full_precision_files_only_loads(
    models: ModelPaths, pipeline: headshot.FaceIDPipeline, tmp_path: Path
) -> None:
    # An operator's SD1.5 fine-tune (Realistic Vision ships no fp16 files) through
    # LOCAL_MODEL_SD15: the loader takes the full-precision files.
    import shutil

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = tmp_path / "realistic"
    shutil.copytree(models.folder("sd15"), folder)
    for part, model in (("unet", UNet2DConditionModel), ("text_encoder", CLIPTextModel)):
        loaded = model.from_pretrained(folder / part, variant="fp16")
        for fp16 in (folder / part).glob("*.fp16.*"):
            fp16.unlink()
        loaded.save_pretrained(folder / part)
    assert not list(folder.rglob("*.fp16.*"))
    full = headshot.load(
        ModelPaths(models.root, {"sd15": folder}), Runtime(device="cpu"), StandInFaces()
    )
    unet, expected = full.unet.state_dict(), pipeline.unet.state_dict()
    assert all(torch.equal(unet[name], tensor) for name, tensor in expected.items())
