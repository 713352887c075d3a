"""Finding the face in a selfie: its identity embedding, its five keypoints, an aligned crop.

`FaceAnalyser` is the interface the pipelines use. `InsightFaceAnalyser` is the real one
(insightface's detector and ArcFace recogniser, on onnxruntime, from one face-model pack's
folder); tests may pass any deterministic stand-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from backends.errors import InvalidRequest

NO_FACE = "no face found in the selfie: send a clear, front-facing photo of one face"


class NoFaceFound(InvalidRequest):
    def __init__(self) -> None:
        super().__init__(NO_FACE)


@dataclass(frozen=True)
class Face:
    """One detected face.

    `embedding` is the recogniser's raw 512-d identity vector, as insightface's `embedding`
    (an ArcFace network's norm is about 20-30); `normed_embedding` is it scaled to length 1.
    Each method gets the one it was trained with: IP-Adapter-FaceID the normalised one,
    InstantID the raw one. `keypoints` are five (x, y) points in image pixels: the subject's
    right eye (on the image's left), their left eye, the nose, the right and left mouth corners
    (insightface's order); `box` is (left, top, right, bottom)."""

    embedding: np.ndarray
    keypoints: np.ndarray
    box: tuple[float, float, float, float]

    @property
    def normed_embedding(self) -> np.ndarray:
        embedding = np.asarray(self.embedding, dtype=np.float32)
        return embedding / max(float(np.linalg.norm(embedding)), 1e-12)


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


class InsightFaceAnalyser:
    """insightface's detector and ArcFace recogniser, from the `.onnx` files of one face-model
    pack's folder (antelopev2 or buffalo_l: see `components.face_pack`). Each file is opened by
    path: insightface never downloads here."""

    def __init__(self, folder: Path, *, use_gpu: bool) -> None:
        from insightface.model_zoo import model_zoo

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_gpu else None
        found: dict[str, list[tuple[Path, Any]]] = {"recognition": [], "detection": []}
        # The pack's files may sit below the folder (the buffalo_l mirror keeps them under
        # models/buffalo_l/).
        for path in sorted(folder.rglob("*.onnx")):
            model = model_zoo.get_model(str(path), providers=providers or ["CPUExecutionProvider"])
            task = getattr(model, "taskname", None)
            if task in found:
                found[task].append((path, model))
        if not found["detection"] or not found["recognition"]:
            raise InvalidRequest(
                f"the insightface folder {folder} needs a face detector and a recogniser (.onnx)"
            )
        for task, models in found.items():
            # Two packs in one folder: taking either recogniser could pair a method with the
            # embeddings of a network it was not trained on.
            if len(models) > 1:
                names = ", ".join(str(path.relative_to(folder)) for path, _ in models)
                raise InvalidRequest(
                    f"the insightface folder {folder} holds more than one face {task} model "
                    f"({names}): point it at one pack's folder"
                )
        models = {task: found[task][0][1] for task in found}
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
        box = tuple(float(v) for v in boxes[best, :4])
        return Face(embedding, np.asarray(keypoints[best], dtype=np.float32), box)  # type: ignore[arg-type]
