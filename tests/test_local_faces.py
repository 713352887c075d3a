"""Face geometry for the local backend, and the insightface analyser when its models are here.

The insightface models are not downloaded in tests (they are non-commercial and large): the
analyser's test runs where `LOCAL_MODEL_BUFFALO_L` or `./models/buffalo_l` holds them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")  # the [local] extra brings numpy; the core has none

from PIL import Image  # noqa: E402

from backends.local.control_maps import head_pose_map, keypoint_map  # noqa: E402
from backends.local.faces import (  # noqa: E402
    Face,
    NoFaceFound,
    aligned_crop,
    similarity_transform,
)
from tests.conftest import EXAMPLE_SELFIE  # noqa: E402
from tests.tiny_models.faces import StandInFaces  # noqa: E402

KEYPOINTS = np.array([[200, 300], [300, 300], [250, 360], [215, 420], [285, 420]], float)


def test_the_similarity_transform_recovers_a_known_rotation_scale_and_shift() -> None:
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = KEYPOINTS @ (scale * rotation).T + shift
    matrix = similarity_transform(KEYPOINTS, moved)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-6)


def test_the_aligned_crop_puts_the_eyes_where_arcface_expects_them() -> None:
    # A white dot on each eye of a dark, tilted face: after alignment the dots sit at ArcFace's
    # eye positions (scaled to the crop size), whatever the tilt.
    image = Image.new("RGB", (512, 768), (20, 20, 20))
    tilt = np.deg2rad(15)
    centre = KEYPOINTS.mean(axis=0)
    rotation = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    tilted = (KEYPOINTS - centre) @ rotation.T + centre
    pixels = np.asarray(image).copy()
    for x, y in tilted[:2]:
        pixels[round(y) - 3 : round(y) + 4, round(x) - 3 : round(x) + 4] = 255
    crop = np.asarray(aligned_crop(Image.fromarray(pixels), tilted, size=224)).mean(axis=2)
    bright = np.argwhere(crop > 128)
    left = bright[bright[:, 1] < 112].mean(axis=0)[::-1]
    right = bright[bright[:, 1] >= 112].mean(axis=0)[::-1]
    np.testing.assert_allclose(left, np.array([38.29, 51.70]) * 2, atol=2.5)
    np.testing.assert_allclose(right, np.array([73.53, 51.50]) * 2, atol=2.5)


def _colour(image: Image.Image, point: tuple[float, float]) -> list[int]:
    return list(image.getpixel((round(point[0]), round(point[1]))))


def test_the_keypoint_map_is_instantids_draw_kps_in_absolute_pixels() -> None:
    # On a ~1 MP canvas, as InstantID draws it: a dot of radius 10 px in each point's colour,
    # limbs to the nose in the outer point's colour at 60 %, 4 px either side of their axis.
    image = keypoint_map((896, 1152), KEYPOINTS)
    assert image.size == (896, 1152)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    for (x, y), colour in zip(KEYPOINTS, colours, strict=True):
        assert _colour(image, (x, y)) == list(colour)
        assert _colour(image, (x, y - 9)) == list(colour)  # inside the radius
        assert _colour(image, (x, y - 12)) != list(colour)  # outside it
    # The subject's right eye (kps[0]) to the nose: red at 60 %, about 4 px each side.
    eye, nose = KEYPOINTS[0], KEYPOINTS[2]
    middle = (eye + nose) / 2
    assert _colour(image, middle) == [153, 0, 0]
    across = np.array([nose[1] - eye[1], eye[0] - nose[0]]) / np.linalg.norm(nose - eye)
    assert _colour(image, middle + 3 * across) == [153, 0, 0]
    assert _colour(image, middle + 7 * across) == [0, 0, 0]
    # The same strokes on a canvas twice the size: the widths are pixels, not fractions.
    twice = keypoint_map((1792, 2304), KEYPOINTS)
    assert _colour(twice, (KEYPOINTS[0][0], KEYPOINTS[0][1] - 12)) != [255, 0, 0]


def test_the_pose_map_uses_openposes_colours_for_each_eye() -> None:
    # controlnet_aux's COCO-18 table: right eye (170, 0, 255), left eye (255, 0, 255), nose red,
    # neck orange; limbs neck-nose, nose-right eye, nose-left eye at 60 % of theirs. insightface's
    # kps[0] is the subject's right eye.
    image = head_pose_map((512, 768), KEYPOINTS)
    right_eye, left_eye, nose = KEYPOINTS[0], KEYPOINTS[1], KEYPOINTS[2]
    assert _colour(image, right_eye) == [170, 0, 255]
    assert _colour(image, left_eye) == [255, 0, 255]
    assert _colour(image, nose) == [255, 0, 0]
    assert _colour(image, (right_eye + nose) / 2) == [51, 0, 153]
    assert _colour(image, (left_eye + nose) / 2) == [153, 0, 153]
    mouth = KEYPOINTS[3:].mean(axis=0)
    neck = nose + (mouth - nose) * 3
    assert _colour(image, neck) == [255, 85, 0]
    assert _colour(image, (neck + nose) / 2) == [0, 0, 153]
    # OpenPose draws a radius of 4 px at a 512 px short side; at 1024 it is 8 px.
    assert _colour(image, (right_eye[0], right_eye[1] - 6)) != [170, 0, 255]
    double = head_pose_map((1024, 1536), KEYPOINTS * 2)
    assert _colour(double, (right_eye[0] * 2, right_eye[1] * 2 - 6)) == [170, 0, 255]


def test_a_face_keeps_the_raw_embedding_and_gives_the_normalised_one() -> None:
    raw = np.arange(1, 513, dtype=np.float32)
    face = Face(embedding=raw, keypoints=KEYPOINTS, box=(0.0, 0.0, 1.0, 1.0))
    assert face.embedding is raw
    assert float(np.linalg.norm(face.normed_embedding)) == pytest.approx(1.0)
    np.testing.assert_allclose(face.normed_embedding * np.linalg.norm(raw), raw, rtol=1e-5)


def test_the_stand_in_gives_raw_embeddings_as_long_as_arcfaces() -> None:
    rng = np.random.default_rng(5)
    norms = []
    for _ in range(8):
        image = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
        norms.append(float(np.linalg.norm(StandInFaces().analyse(image).embedding)))
    assert all(20 <= norm <= 30 for norm in norms)
    assert len(set(norms)) == len(norms)


def _insightface_folder() -> Path | None:
    folder = Path(os.environ.get("LOCAL_MODEL_BUFFALO_L", "models/buffalo_l"))
    return folder if folder.is_dir() and any(folder.rglob("*.onnx")) else None


@pytest.mark.skipif(_insightface_folder() is None, reason="no buffalo_l model folder here")
def test_insightface_finds_the_example_selfies_face() -> None:
    pytest.importorskip("insightface")
    from backends.local.faces import InsightFaceAnalyser

    folder = _insightface_folder()
    assert folder is not None
    analyser = InsightFaceAnalyser(folder, use_gpu=False)
    with Image.open(EXAMPLE_SELFIE) as selfie:
        face = analyser.analyse(selfie)
        width, height = selfie.size
    assert face.embedding.shape == (512,)
    assert float(np.linalg.norm(face.embedding)) > 2  # raw, as insightface's `embedding`
    assert abs(float(np.linalg.norm(face.normed_embedding)) - 1.0) < 1e-4
    assert ((face.keypoints >= 0) & (face.keypoints <= [width, height])).all()
    with pytest.raises(NoFaceFound):
        analyser.analyse(Image.new("RGB", (640, 640)))


def test_each_method_gets_the_face_pack_and_the_embedding_it_was_trained_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's own loading, insightface's own detection and recognition (tiny ONNX packs,
    # one recogniser matrix each), tiny pipelines: FaceID (headshot, facegen) gets buffalo_l's
    # embedding normalised, InstantID (avatar) antelopev2's raw, and flux_headshot's face check
    # buffalo_l's analyser, the same one as FaceID's.
    pytest.importorskip("diffusers")
    pytest.importorskip("insightface")
    import torch
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    from backends.local.config import WorkerConfig
    from backends.local.core import WorkerCore
    from backends.local.faces import InsightFaceAnalyser
    from backends.local.runtime import Runtime
    from backends.params import Operation
    from tests.tiny_models import face_packs, flux, sd15, sdxl

    for build in (sd15.build, sdxl.build, flux.build, face_packs.build):
        build(tmp_path)
    config = WorkerConfig(
        models_root=tmp_path,
        operations=tuple(Operation),
        runtime=Runtime(device="cpu", compile=False),
    )
    core = WorkerCore(config)
    core.load()
    with Image.open(EXAMPLE_SELFIE) as image:
        selfie = image.convert("RGB")
    expected = {
        pack: InsightFaceAnalyser(tmp_path / pack, use_gpu=False).analyse(selfie).embedding
        for pack in face_packs.PACKS
    }
    assert 20 <= float(np.linalg.norm(expected["buffalo_l"])) <= 30
    assert abs(float(np.dot(*(e / np.linalg.norm(e) for e in expected.values())))) < 0.5

    received: list[torch.Tensor] = []
    original = MultiIPAdapterImageProjection.forward

    def record(self: MultiIPAdapterImageProjection, image_embeds: list[torch.Tensor]) -> object:
        received.append(image_embeds[0].detach().float().reshape(2, -1)[1].clone())
        return original(self, image_embeds)

    monkeypatch.setattr(MultiIPAdapterImageProjection, "forward", record)
    selfie_bytes = EXAMPLE_SELFIE.read_bytes()
    small = {"prompt": "a headshot", "seed": 3, "width": 64, "height": 96}
    for operation, pack, normalised in (
        (Operation.HEADSHOT, "buffalo_l", True),
        (Operation.FACEGEN, "buffalo_l", True),
        (Operation.AVATAR, "antelopev2", False),
    ):
        received.clear()
        core.run({"operation": str(operation), **small}, selfie_bytes, None)
        vector = expected[pack] / np.linalg.norm(expected[pack]) if normalised else expected[pack]
        assert received, operation
        np.testing.assert_allclose(received[0].numpy(), vector, rtol=1e-3, atol=1e-3)

    flux_faces = getattr(core._pipelines[Operation.FLUX_HEADSHOT], "faces", None)
    headshot_faces = getattr(core._pipelines[Operation.HEADSHOT], "faces", None)
    assert isinstance(flux_faces, InsightFaceAnalyser) and flux_faces is headshot_faces


@pytest.mark.parametrize(
    ("pack", "other"), [("buffalo_l", "antelopev2"), ("antelopev2", "buffalo_l")]
)
def test_insightface_opens_the_packs_own_folder(tmp_path: Path, pack: str, other: str) -> None:
    from backends.local.components import MissingComponent
    from backends.local.config import WorkerConfig
    from backends.local.core import face_analyser
    from backends.local.runtime import Runtime

    (tmp_path / other).mkdir()
    (tmp_path / other / "model.onnx").write_bytes(b"x")
    config = WorkerConfig(models_root=tmp_path, operations=(), runtime=Runtime(device="cpu"))
    with pytest.raises(MissingComponent) as caught:
        face_analyser(config, pack)
    assert caught.value.folder == tmp_path / pack
    assert f"set LOCAL_MODEL_{pack.upper()}" in caught.value.message


def test_a_folder_holding_two_packs_is_refused_not_mixed(tmp_path: Path) -> None:
    # An insightface models root with both packs: either recogniser could be taken, so the
    # analyser names them and refuses.
    pytest.importorskip("insightface")
    from backends.errors import InvalidRequest
    from backends.local.faces import InsightFaceAnalyser
    from tests.tiny_models import face_packs

    face_packs.build(tmp_path)
    with pytest.raises(InvalidRequest) as caught:
        InsightFaceAnalyser(tmp_path, use_gpu=False)
    message = caught.value.message
    assert message.startswith(f"the insightface folder {tmp_path} holds more than one face")
    assert "glintr100.onnx" in message and "w600k_r50.onnx" in message
    assert InsightFaceAnalyser(tmp_path / "buffalo_l", use_gpu=False) is not None
