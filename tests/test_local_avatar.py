"""The avatar pipeline (InstantID on SDXL) on tiny random-weight models, on the CPU, through the
real loading code: outputs, seeds, every ModelsLab knob reaching its pipeline argument and the
pixels, the refusals, the missing-folder error, and fused QKV changing nothing."""

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
from backends.params import GenerationParams, Operation  # noqa: E402
from tests.tiny_models import sdxl  # noqa: E402
from tests.tiny_models.faces import StandInFaces  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AVATAR_COMPONENTS = ("sdxl", "instantid", "controlnet_pose", "controlnet_canny")


def _noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


SELFIE = _noise(64, 64, seed=1)
# A different aspect ratio from the selfie's, so that its face lands elsewhere once fitted.
POSE = _noise(96, 48, seed=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("avatar_models")
    sdxl.build(root)
    return root


@pytest.fixture(scope="module")
def pipeline(models: Path) -> avatar.AvatarPipeline:
    return avatar.load(ModelPaths(models), Runtime(device="cpu"), StandInFaces())


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
    assert (arguments["width"], arguments["height"]) == (512, 768)
    assert arguments["controlnets"] == ["identitynet", "pose"]
    assert arguments["controlnet_conditioning_scale"] == [0.8, 0.4]
    assert arguments["ip_adapter_scale"] == 1.0
    assert arguments["num_inference_steps"] == 21
    assert arguments["guidance_scale"] == 5.0
    assert all(image.size == (512, 768) for image in arguments["control_images"])


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


def test_keypoints_follow_the_face_into_the_output_frame(pipeline: avatar.AvatarPipeline) -> None:
    # The stand-in puts the nose at (0.5, 0.52) of the selfie; the 64×64 selfie is scaled by
    # 1.5 to cover 64×96 and cropped by 16 pixels each side: the nose lands at (32, 50).
    keypoints = np.asarray(pipeline.arguments(_job())["control_images"][0])
    assert tuple(keypoints[50, 32]) == (0, 0, 255)


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
