"""Finding the face in a selfie: its identity embedding, its five keypoints, an aligned crop.

`FaceAnalyser` is the interface the pipelines use. `InsightFaceAnalyser` is the real one
(insightface's detector and ArcFace recogniser, on onnxruntime, from the `insightface` model
folder); tests may pass any deterministic stand-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw

from backends.errors import InvalidRequest

NO_FACE = "no face found in the selfie: send a clear, front-facing photo of one face"


class NoFaceFound(InvalidRequest):
    def __init__(self) -> None:
        super().__init__(NO_FACE)


@dataclass(frozen=True)
class Face:
    """One detected face. `embedding` is the 512-d identity vector (L2-normalised);
    `keypoints` are five (x, y) points in image pixels: left eye, right eye, nose, left and
    right mouth corners (insightface's order)."""

    embedding: np.ndarray
    keypoints: np.ndarray
    box: tuple[float, float, float, float]


class FaceAnalyser(Protocol):
    def analyse(self, image: Image.Image) -> Face:
        """The largest face in `image` (RGB). Raises NoFaceFound."""
        ...


# ArcFace's reference positions of the five keypoints in a 112×112 crop.
_ARCFACE_POINTS = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2×3 rotation + uniform scale + translation that best maps `source` onto `target`
    (least squares, Umeyama's method)."""
    src_mean, dst_mean = source.mean(axis=0), target.mean(axis=0)
    src, dst = source - src_mean, target - dst_mean
    covariance = dst.T @ src / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    scale = (singular * sign).sum() / src.var(axis=0).sum()
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def aligned_crop(image: Image.Image, keypoints: np.ndarray, size: int = 224) -> Image.Image:
    """The face cut out and rotated upright, eyes and mouth where ArcFace expects them."""
    matrix = similarity_transform(np.asarray(keypoints, dtype=np.float64), _ARCFACE_POINTS)
    matrix = np.vstack([matrix, [0.0, 0.0, 1.0]])
    # PIL wants the map from output pixels back to input pixels, at the requested size.
    scale = np.diag([112.0 / size, 112.0 / size, 1.0])
    inverse = np.linalg.inv(matrix) @ scale
    coefficients = tuple(inverse[:2].reshape(-1))
    return image.convert("RGB").transform(
        (size, size), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR
    )


_KEYPOINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))


def keypoint_map(size: tuple[int, int], keypoints: np.ndarray) -> Image.Image:
    """The five keypoints drawn the way InstantID's IdentityNet was trained to read them:
    coloured limbs from each point to the nose and a coloured dot on each point, on black."""
    canvas = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    points = [tuple(map(float, p)) for p in np.asarray(keypoints)]
    width = max(2, round(min(size) / 128))
    for a, b in ((0, 2), (1, 2), (3, 2), (4, 2)):
        colour = tuple(c * 6 // 10 for c in _KEYPOINT_COLOURS[a])
        draw.line([points[a], points[b]], fill=colour, width=width * 2)
    for point, colour in zip(points, _KEYPOINT_COLOURS, strict=True):
        x, y = point
        draw.ellipse([x - width * 2, y - width * 2, x + width * 2, y + width * 2], fill=colour)
    return canvas


def head_pose_map(size: tuple[int, int], keypoints: np.ndarray) -> Image.Image:
    """An OpenPose-style head skeleton (nose, eyes, neck) from the five face keypoints.

    The pose ControlNet reads OpenPose maps; the bundled backend has no body-pose model, so
    it draws the head's part of the skeleton, which is what a headshot's pose is mostly about.
    """
    points = np.asarray(keypoints, dtype=np.float64)
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    mouth = (mouth_left + mouth_right) / 2
    neck = nose + (mouth - nose) * 3.0
    canvas = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(min(size) / 96))
    limbs = (
        (neck, nose, (0, 0, 153)),
        (nose, right_eye, (153, 0, 153)),
        (nose, left_eye, (51, 0, 153)),
    )
    for start, end, colour in limbs:
        draw.line([tuple(start), tuple(end)], fill=colour, width=width * 2)
    for point, colour in ((nose, (255, 0, 0)), (neck, (255, 85, 0))):
        x, y = point
        draw.ellipse([x - width, y - width, x + width, y + width], fill=colour)
    for point, colour in ((right_eye, (170, 0, 255)), (left_eye, (255, 0, 170))):
        x, y = point
        draw.ellipse([x - width, y - width, x + width, y + width], fill=colour)
    return canvas


class InsightFaceAnalyser:
    """insightface's detector and ArcFace recogniser, from the `.onnx` files of one local folder
    (antelopev2 or buffalo_l). Each file is opened by path: insightface never downloads here."""

    def __init__(self, folder: Path, *, use_gpu: bool) -> None:
        from insightface.model_zoo import model_zoo

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_gpu else None
        models = {}
        for path in sorted(folder.glob("*.onnx")):
            model = model_zoo.get_model(str(path), providers=providers or ["CPUExecutionProvider"])
            task = getattr(model, "taskname", None)
            if task in ("detection", "recognition") and task not in models:
                models[task] = model
        if set(models) != {"detection", "recognition"}:
            raise InvalidRequest(
                f"the insightface folder {folder} needs a face detector and a recogniser (.onnx)"
            )
        self._detector = models["detection"]
        self._recogniser = models["recognition"]
        ctx = 0 if use_gpu else -1
        self._detector.prepare(ctx, input_size=(640, 640), det_thresh=0.5)
        self._recogniser.prepare(ctx)

    def analyse(self, image: Image.Image) -> Face:
        from insightface.app.common import Face as DetectedFace

        bgr = np.asarray(image.convert("RGB"))[:, :, ::-1].copy()
        boxes, keypoints = self._detector.detect(bgr, max_num=0)
        if boxes is None or len(boxes) == 0 or keypoints is None:
            raise NoFaceFound
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        best = int(np.argmax(areas))
        detected = DetectedFace(bbox=boxes[best, :4], kps=keypoints[best], det_score=boxes[best, 4])
        embedding = np.asarray(self._recogniser.get(bgr, detected), dtype=np.float32)
        embedding = embedding / max(float(np.linalg.norm(embedding)), 1e-12)
        box = tuple(float(v) for v in boxes[best, :4])
        return Face(embedding, np.asarray(keypoints[best], dtype=np.float32), box)  # type: ignore[arg-type]
