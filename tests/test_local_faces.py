"""Face geometry for the local backend, and the insightface analyser when its models are here.

The insightface models are not downloaded in tests (they are non-commercial and large): the
analyser's test runs where `LOCAL_MODEL_INSIGHTFACE` or `./models/insightface` holds them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")  # the [local] extra brings numpy; the core has none

from PIL import Image  # noqa: E402

from backends.local.control_maps import head_pose_map, keypoint_map  # noqa: E402
from backends.local.faces import NoFaceFound, aligned_crop, similarity_transform  # noqa: E402
from tests.conftest import EXAMPLE_SELFIE  # noqa: E402

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


def test_the_keypoint_and_pose_maps_draw_around_the_keypoints() -> None:
    keypoints = keypoint_map((512, 768), KEYPOINTS)
    assert keypoints.size == (512, 768)
    left, top, right, bottom = keypoints.getbbox()
    assert left < 200 < 300 < right and top < 300 < 420 < bottom
    assert np.asarray(keypoints)[300, 200].tolist() == [255, 0, 0]  # the left eye's colour
    pose = head_pose_map((512, 768), KEYPOINTS)
    assert pose.getbbox()[3] > 420  # the neck reaches below the mouth


def _insightface_folder() -> Path | None:
    folder = Path(os.environ.get("LOCAL_MODEL_INSIGHTFACE", "models/insightface"))
    return folder if folder.is_dir() and any(folder.glob("*.onnx")) else None


@pytest.mark.skipif(_insightface_folder() is None, reason="no insightface model folder here")
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
    assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-4
    assert ((face.keypoints >= 0) & (face.keypoints <= [width, height])).all()
    with pytest.raises(NoFaceFound):
        analyser.analyse(Image.new("RGB", (640, 640)))
