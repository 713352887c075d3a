"""The avatar pipeline (InstantID on SDXL) on tiny random-weight models, on the CPU, through the
real loading code: outputs, seeds, every ModelsLab knob reaching its pipeline argument and the
pixels, the refusals, the missing-folder error, and fused QKV changing nothing; what follows
InstantID's reference: the working size (about the VAE's side², 64 px at the tiny side) and the
size delivered, the maps drawn at the working size, the raw face embedding, the face-region mask
on IdentityNet's residuals and on the adapter's attention, and the Euler scheduler."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import numpy as np  # noqa: E402

pytest.importorskip("diffusers")
pytest.importorskip("cv2")

from PIL import Image  # noqa: E402

from backends.errors import InvalidRequest  # noqa: E402
from backends.local import avatar  # noqa: E402
from backends.local.components import COMPONENTS, MissingComponent, ModelPaths  # noqa: E402
from backends.local.faces import NoFaceFound  # noqa: E402
from backends.local.pipeline import LocalJob  # noqa: E402
from backends.local.runtime import Runtime  # noqa: E402
from backends.local.sizes import working_size  # noqa: E402
from backends.params import GenerationParams, Operation  # noqa: E402
from tests.tiny_models import sdxl  # noqa: E402
from tests.tiny_models.faces import RAW_NORMS, StandInFaces  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AVATAR_COMPONENTS = ("sdxl", "instantid", "controlnet_pose", "controlnet_canny")


def _noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


SELFIE = _noise(64, 64, seed=1)
# A different aspect ratio from the selfie's, so that its face lands elsewhere once fitted.
POSE = _noise(96, 48, seed=2)
# A 1:3 request: at the tiny side of 64 its working size, 64 × 128, is not square, and the face
# box of the 64 × 64 selfie fitted to it (scaled by 2) leaves rows of cells outside it.
TALL = {"width": 256, "height": 768}
TINY_SIDE = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("avatar_models")
    sdxl.build(root)
    return root


@pytest.fixture(scope="module")
def pipeline(models: Path) -> avatar.AvatarPipeline:
    return avatar.load(ModelPaths(models), Runtime(device="cpu"), StandInFaces("antelopev2"))


@pytest.fixture(scope="module")
def baseline(pipeline: avatar.AvatarPipeline) -> list[np.ndarray]:
    return _pixels(pipeline, _job())


def _job(pose: Image.Image | None = None, face: Image.Image = SELFIE, **options: Any) -> LocalJob:
    settings = {"prompt": "a studio portrait", "width": 64, "height": 96, "seed": 7, **options}
    return LocalJob(params=GenerationParams.create("avatar", **settings), face=face, pose=pose)


def _pixels(pipeline: Any, job: LocalJob) -> list[np.ndarray]:
    return [np.asarray(image) for image in pipeline.generate(job)]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("samples", [1, 2])
def test_outputs_count_and_size(pipeline: avatar.AvatarPipeline, samples: int) -> None:
    images = pipeline.generate(_job(samples=samples))
    assert len(images) == samples
    assert all(image.size == (64, 96) for image in images)
    assert pipeline.arguments(_job(samples=samples))["seeds"] == [7 + i for i in range(samples)]


def test_modelslab_defaults_apply_when_unset(pipeline: avatar.AvatarPipeline) -> None:
    # Parameters built without `create` have no defaults filled in: the pipeline applies them.
    params = GenerationParams(operation=Operation.AVATAR, prompt="a portrait", seed=3)
    arguments = pipeline.arguments(LocalJob(params=params, face=SELFIE))
    assert arguments["output_size"] == (512, 768)
    working = working_size(512, 768, side=TINY_SIDE, multiple=64)
    # Generated at about the tiny side's square, not at the asked 512 × 768.
    assert (arguments["width"], arguments["height"]) == working
    assert working[0] * working[1] <= 2 * TINY_SIDE**2
    assert arguments["controlnets"] == ["identitynet", "pose"]
    assert arguments["controlnet_conditioning_scale"] == [0.8, 0.4]
    assert arguments["ip_adapter_scale"] == 1.0
    assert arguments["num_inference_steps"] == 21
    assert arguments["guidance_scale"] == 5.0
    assert all(image.size == working for image in arguments["control_images"])


def test_instantid_samples_with_euler_over_sdxl_s_schedule(
    pipeline: avatar.AvatarPipeline,
) -> None:
    from diffusers import EulerDiscreteScheduler

    scheduler = pipeline._base.scheduler
    assert type(scheduler) is EulerDiscreteScheduler
    published = sdxl.PUBLISHED_SCHEDULER
    for key in ("beta_start", "beta_end", "beta_schedule", "timestep_spacing", "steps_offset"):
        assert scheduler.config[key] == published[key], key


def test_working_size_is_about_a_megapixel_at_sdxl_s_side() -> None:
    # InstantID's app.py brings a 2:3 photo to a 1280 px long side, floored to 64: 832 × 1280.
    assert avatar.avatar_working_size(512, 768, side=1024) == (832, 1280)
    assert avatar.avatar_working_size(512, 512, side=1024) == (1024, 1024)
    for width, height in [(512, 768), (384, 768), (512, 640), (768, 512), (64, 64)]:
        w, h = avatar.avatar_working_size(width, height, side=1024)
        assert w % 64 == 0 and h % 64 == 0
        assert 0.85 < w * h / 1024**2 < 1.15, (width, height)
        assert abs(w / h - width / height) < 0.08, (width, height)


def test_the_pipeline_runs_at_the_working_size_and_delivers_the_asked_size(
    pipeline: avatar.AvatarPipeline,
) -> None:
    arguments = pipeline.arguments(_job(**TALL))
    working = working_size(256, 768, side=TINY_SIDE, multiple=64)
    assert working == (64, 128) == (arguments["width"], arguments["height"])
    assert all(image.size == working for image in arguments["control_images"])
    inputs: list[tuple[int, ...]] = []
    handle = pipeline._base.unet.register_forward_pre_hook(
        lambda _module, args: inputs.append(tuple(args[0].shape))
    )
    try:
        images = pipeline.generate(_job(**TALL))
    finally:
        handle.remove()
    # Two rows (with and without guidance) of latents an eighth of the working size.
    assert set(inputs) == {(2, 4, 128 // 8, 64 // 8)}
    assert [image.size for image in images] == [(256, 768)]


def test_instantid_gets_the_raw_face_embedding(pipeline: avatar.AvatarPipeline) -> None:
    received: list[Any] = []
    handle = pipeline._base.unet.encoder_hid_proj.register_forward_pre_hook(
        lambda _module, args: received.append(args[0][0].detach().clone())
    )
    try:
        pipeline.generate(_job())
    finally:
        handle.remove()
    raw = StandInFaces("antelopev2").analyse(SELFIE).embedding
    # Rows: the unconditional (zero) identity, then the face's, as insightface gives it.
    identity = received[0].reshape(2, -1)
    assert not identity[0].any()
    assert RAW_NORMS[0] < float(identity[1].norm()) < RAW_NORMS[1]
    assert np.allclose(identity[1].numpy(), raw)


def test_same_seed_same_pixels(pipeline: avatar.AvatarPipeline, baseline: list) -> None:
    assert _same(_pixels(pipeline, _job()), baseline)
    assert not _same(_pixels(pipeline, _job(seed=8)), baseline)


def test_sample_i_of_a_batch_is_the_image_of_seed_plus_i(
    pipeline: avatar.AvatarPipeline, baseline: list
) -> None:
    batch = _pixels(pipeline, _job(samples=2))
    assert _same(batch[:1], baseline)
    assert _same(batch[1:], _pixels(pipeline, _job(seed=8)))


# knob, value, the argument it must change (key, index in a list or None).
KNOBS = [
    ("prompt", "an oil painting of a knight", "prompt", None),
    ("negative_prompt", "blurry, low quality", "negative_prompt", None),
    ("guidance_scale", 8.0, "guidance_scale", None),
    ("num_inference_steps", 31, "num_inference_steps", None),
    ("identitynet_strength_ratio", 0.2, "controlnet_conditioning_scale", 0),
    ("adapter_strength_ratio", 0.3, "ip_adapter_scale", None),
    ("pose_strength", 1.0, "controlnet_conditioning_scale", 1),
]


@pytest.mark.parametrize(("knob", "value", "key", "index"), KNOBS, ids=[k[0] for k in KNOBS])
def test_each_knob_reaches_its_argument_and_the_pixels(
    pipeline: avatar.AvatarPipeline,
    baseline: list,
    knob: str,
    value: Any,
    key: str,
    index: int | None,
) -> None:
    before, after = pipeline.arguments(_job()), pipeline.arguments(_job(**{knob: value}))
    if index is None:
        assert before[key] != after[key] and after[key] == value
    else:
        assert before[key][index] != after[key][index] and after[key][index] == value
    assert not _same(_pixels(pipeline, _job(**{knob: value})), baseline)


def test_canny_strength_with_canny_selected(pipeline: avatar.AvatarPipeline) -> None:
    selected = {"controlnet_selection": ("pose", "canny")}
    before = pipeline.arguments(_job(**selected))
    after = pipeline.arguments(_job(canny_strength=0.9, **selected))
    assert before["controlnet_conditioning_scale"] == [0.8, 0.4, 0.3]
    assert after["controlnet_conditioning_scale"] == [0.8, 0.4, 0.9]
    assert not _same(
        _pixels(pipeline, _job(canny_strength=0.9, **selected)), _pixels(pipeline, _job(**selected))
    )


def test_controlnet_selection_chooses_the_controlnets(
    pipeline: avatar.AvatarPipeline, baseline: list
) -> None:
    assert pipeline.arguments(_job())["controlnets"] == ["identitynet", "pose"]
    both = _job(controlnet_selection=("pose", "canny"))
    arguments = pipeline.arguments(both)
    assert arguments["controlnets"] == ["identitynet", "pose", "canny"]
    assert len(arguments["control_images"]) == 3
    assert pipeline.arguments(_job(controlnet_selection="canny"))["controlnets"] == [
        "identitynet",
        "canny",
    ]
    assert not _same(_pixels(pipeline, both), baseline)


def test_a_pose_image_moves_the_identitynet_keypoints(
    pipeline: avatar.AvatarPipeline, baseline: list
) -> None:
    selfie_only = pipeline.arguments(_job())
    posed = pipeline.arguments(_job(pose=POSE))
    keypoints = [np.asarray(a["control_images"][0]) for a in (selfie_only, posed)]
    assert not np.array_equal(*keypoints)
    # The identity still comes from the selfie.
    assert np.array_equal(selfie_only["face_embedding"], posed["face_embedding"])
    assert not _same(_pixels(pipeline, _job(pose=POSE)), baseline)


def test_keypoints_and_face_box_follow_the_face_into_the_working_frame(
    pipeline: avatar.AvatarPipeline,
) -> None:
    # The stand-in puts the nose at (0.5, 0.52) of the selfie and the box at (0.2, 0.2) to
    # (0.8, 0.85); the 64×64 selfie is scaled by 2 to cover the 64×128 working size and cropped
    # by 32 pixels each side: the nose lands at (32, 66.56), the box at (0, 25) to (64, 108).
    arguments = pipeline.arguments(_job(**TALL))
    keypoints = np.asarray(arguments["control_images"][0])
    assert tuple(keypoints[66, 32]) == (0, 0, 255)
    assert tuple(keypoints[66 + 11, 32]) == (0, 0, 0)
    assert arguments["face_box"] == (0, 25, 64, 108)


def _cells(box: tuple[int, int, int, int], grid: tuple[int, int], cell: int) -> tuple[Any, Any]:
    """Masks over a (rows, columns) grid of `cell`-pixel squares: the cells wholly outside
    `box`, and those wholly inside it."""
    left, top, right, bottom = box
    ys, xs = np.mgrid[0 : grid[0], 0 : grid[1]] * cell
    outside = (xs + cell <= left) | (xs >= right) | (ys + cell <= top) | (ys >= bottom)
    inside = (xs >= left) & (xs + cell <= right) & (ys >= top) & (ys + cell <= bottom)
    return outside, inside


def test_identitynet_residuals_are_zero_outside_the_face_box(
    pipeline: avatar.AvatarPipeline,
) -> None:
    # The pose ControlNet at strength 0 adds zeros: the UNet receives IdentityNet's residuals.
    job = _job(pose_strength=0.0, **TALL)
    box = pipeline.arguments(job)["face_box"]
    produced: list[Any] = []
    received: list[Any] = []
    hooks = [
        pipeline._controlnets["identitynet"].register_forward_hook(
            lambda _module, _args, output: produced.append(output)
        ),
        pipeline._base.unet.register_forward_pre_hook(
            lambda _module, _args, kwargs: received.append(kwargs), with_kwargs=True
        ),
    ]
    try:
        pipeline.generate(job)
    finally:
        for hook in hooks:
            hook.remove()
    down, mid = produced[0]
    masked = [*received[0]["down_block_additional_residuals"]]
    masked.append(received[0]["mid_block_additional_residual"])
    checked = 0
    for raw, residual in zip([*down, mid], masked, strict=True):
        rows, columns = residual.shape[-2:]
        outside, inside = _cells(box, (rows, columns), 128 // rows)
        assert outside.any() and inside.any()
        raw, residual = raw.numpy(), residual.numpy()
        assert np.abs(raw[..., outside]).min() > 0
        assert not residual[..., outside].any()
        assert np.array_equal(residual[..., inside], raw[..., inside])
        checked += 1
    assert checked == 5  # conv_in, each block's layer, the downsampler, and the mid block


def test_identity_adapter_adds_nothing_outside_the_face_box(
    pipeline: avatar.AvatarPipeline,
) -> None:
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    unet = pipeline._base.unet
    name = next(
        name
        for name, processor in unet.attn_processors.items()
        if isinstance(processor, IPAdapterAttnProcessor2_0)
    )
    attention = unet.get_submodule(name.removesuffix(".processor"))

    def first_output(strength: float) -> Any:
        outputs: list[Any] = []
        handle = attention.register_forward_hook(
            lambda _module, _args, output: outputs.append(output)
        )
        try:
            pipeline.generate(_job(adapter_strength_ratio=strength, **TALL))
        finally:
            handle.remove()
        return outputs[0].numpy()

    # The same layer's first output with the adapter at full strength and off: its input is the
    # same (no ControlNet residual has been added yet), so the difference is the adapter's.
    with_adapter, without = first_output(1.0), first_output(0.0)
    box = pipeline.arguments(_job(**TALL))["face_box"]
    cells = 128 * 64 // with_adapter.shape[1]
    cell = int(cells**0.5)
    outside, inside = _cells(box, (128 // cell, 64 // cell), cell)
    assert outside.any() and inside.any()
    rows = [with_adapter[:, outside.reshape(-1)], without[:, outside.reshape(-1)]]
    assert np.array_equal(*rows)
    inside_rows = inside.reshape(-1)
    assert (np.abs(with_adapter[:, inside_rows] - without[:, inside_rows]).max(axis=-1) > 0).all()


def test_identitynet_reads_the_identity_tokens_and_the_others_the_text(
    pipeline: avatar.AvatarPipeline,
) -> None:
    contexts: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Any:
        def hook(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
            contexts[name] = tuple(kwargs["encoder_hidden_states"].shape)

        return hook

    handles = [
        net.register_forward_pre_hook(record(name), with_kwargs=True)
        for name, net in pipeline._controlnets.items()
    ]
    try:
        pipeline.generate(_job(controlnet_selection=("pose", "canny")))
    finally:
        for handle in handles:
            handle.remove()
    # Two rows (with and without guidance): 16 identity tokens, or CLIP's 77 text tokens.
    assert contexts == {"identitynet": (2, 16, 64), "pose": (2, 77, 64), "canny": (2, 77, 64)}


def test_canny_edges_come_from_the_pose_image(pipeline: avatar.AvatarPipeline) -> None:
    selected = {"controlnet_selection": ("canny",)}
    edges = [
        np.asarray(pipeline.arguments(_job(pose=pose, **selected))["control_images"][1])
        for pose in (None, POSE)
    ]
    assert edges[0].any() and not np.array_equal(*edges)


def test_depth_is_refused(pipeline: avatar.AvatarPipeline) -> None:
    with pytest.raises(InvalidRequest, match="no depth ControlNet"):
        pipeline.generate(_job(controlnet_selection=("pose", "depth")))


def test_no_face_is_refused(pipeline: avatar.AvatarPipeline) -> None:
    black = Image.new("RGB", (64, 64))
    with pytest.raises(NoFaceFound):
        pipeline.generate(_job(face=black))
    with pytest.raises(InvalidRequest, match="pose image"):
        pipeline.generate(_job(pose=black))


@pytest.mark.parametrize("missing", AVATAR_COMPONENTS)
def test_a_missing_component_names_its_folder_and_the_download_command(
    models: Path, tmp_path: Path, missing: str
) -> None:
    absent = tmp_path / "nowhere"
    paths = ModelPaths(models, {missing: absent})
    with pytest.raises(MissingComponent) as raised:
        avatar.load(paths, Runtime(device="cpu"), StandInFaces())
    assert str(absent) in raised.value.message
    assert "headshot-bot models download --op avatar" in raised.value.message


def test_fused_qkv_changes_nothing_and_keeps_the_identity_adapter(
    models: Path, pipeline: avatar.AvatarPipeline, baseline: list
) -> None:
    from diffusers.models.attention_processor import (
        FusedAttnProcessor2_0,
        IPAdapterAttnProcessor2_0,
    )

    kinds = {type(p) for p in pipeline._base.unet.attn_processors.values()}
    assert {FusedAttnProcessor2_0, IPAdapterAttnProcessor2_0} <= kinds
    unfused = avatar.load(ModelPaths(models), Runtime(device="cpu", fuse_qkv=False), StandInFaces())
    reference = _pixels(unfused, _job())
    difference = max(
        np.abs(a.astype(int) - b.astype(int)).max()
        for a, b in zip(reference, baseline, strict=True)
    )
    assert difference <= 2


def test_plain_pipeline_runs_the_same_arguments_and_leaves_ours_as_it_was(
    pipeline: avatar.AvatarPipeline, baseline: list
) -> None:
    images = avatar.plain_pipeline(pipeline)(_job(samples=2))
    assert [image.size for image in images] == [(64, 96), (64, 96)]
    assert _same(_pixels(pipeline, _job()), baseline)


def test_warm_up_runs(pipeline: avatar.AvatarPipeline) -> None:
    pipeline.warm_up()


def test_identity_adapter_is_written_in_instantid_s_format_and_converts_back(
    pipeline: avatar.AvatarPipeline,
) -> None:
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    torch.manual_seed(0)
    resampler = IPAdapterPlusImageProjection(
        embed_dims=512, output_dims=64, hidden_dims=32, depth=4, heads=1, num_queries=16
    )
    original = sdxl.original_resampler(resampler.state_dict())
    assert "layers.0.0.to_kv.weight" in original and "layers.3.1.3.weight" in original
    unet = pipeline._base.unet
    converted = type(unet)._convert_ip_adapter_image_proj_to_diffusers(
        unet, original, low_cpu_mem_usage=False
    )
    expected = resampler.state_dict()
    assert converted.state_dict().keys() == expected.keys()
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in expected.items())


def test_tiny_folders_have_the_hub_layout(models: Path) -> None:
    for name in AVATAR_COMPONENTS:
        patterns = COMPONENTS[name].allow_patterns
        files = [p.relative_to(models / name).as_posix() for p in (models / name).rglob("*")]
        files = [f for f in files if (models / name / f).is_file()]
        assert files
        for file in files:
            assert any(fnmatch.fnmatch(file, pattern) for pattern in patterns), (name, file)


def test_an_off_centre_face_stays_in_the_picture() -> None:
    # A face near the left edge of a landscape photo, made into a portrait avatar: the photo is
    # cropped around the face, so its box and keypoints stay in the frame (a centre crop would
    # cut the face out and the face mask would be empty).
    from backends.local.faces import Face

    face = Face(
        embedding=np.ones(512, dtype=np.float32),
        keypoints=np.array([[60, 500], [140, 500], [100, 560], [70, 620], [130, 620]], float),
        box=(20.0, 420.0, 180.0, 660.0),
    )
    keypoints, (left, top, right, bottom) = avatar._framed(face, (1920, 1080), (64, 128))
    assert 0 <= left < right <= 64 and 0 <= top < bottom <= 128
    assert (right - left) * (bottom - top) > 0
    assert ((keypoints >= 0) & (keypoints <= [64, 128])).all()
