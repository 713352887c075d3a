"""dlib's face models: where the installed files are, and loading one set of them.

Used: dlib's HOG face detector (code in dlib, Boost Software License, no model file) and three
model files of the face-recognition-models package, whose LICENSE is CC0 1.0 for the whole
package:

* `mmod_human_face_detector.dat`, the CNN face detector that confirms a second face (dlib-models'
  README: trained on dlib's own face detection dataset, CC0);
* `shape_predictor_5_face_landmarks.dat`, the 5-point landmarks that align a face (CC0 on
  dlib's model card);
* `dlib_face_recognition_resnet_model_v1.dat`, the ResNet that embeds a face (CC0 on dlib's
  model card).

Not used: the 68-point predictor that ships beside them: its training data (iBUG 300-W)
excludes commercial use.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CNN_DETECTOR_FILE",
    "EMBEDDER_FILE",
    "LANDMARKS_FILE",
    "FaceModels",
    "FaceModelsMissing",
    "load_models",
]

CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
EMBEDDER_FILE = "dlib_face_recognition_resnet_model_v1.dat"
_MODELS_PACKAGE = "face_recognition_models"
_REMEDY = (
    "install dlib-bin and face-recognition-models (pip install dlib-bin face-recognition-models),"
    " or turn the face check and the identity gate off (FACE_CHECK=0 IDENTITY_GATE=0)"
)


class FaceModelsMissing(Exception):
    """dlib or its face models cannot be loaded; the message says what to install."""


@dataclass(frozen=True)
class FaceModels:
    """One worker's dlib objects: they are not shared between threads or processes.

    `detector` finds faces (HOG); `confirmer` confirms a second one (CNN, see `confirm`);
    `landmarks` and `embedder` describe a face.
    """

    detector: Any
    confirmer: Any
    landmarks: Any
    embedder: Any


def models_folder() -> Path:
    """The `models/` folder of the installed face-recognition-models package.

    The package is located, not imported: its `__init__` imports pkg_resources, which recent
    setuptools no longer provides.
    """
    spec = importlib.util.find_spec(_MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelsMissing(f"Face models not installed: {_REMEDY}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def load_models(folder: Path | None = None) -> FaceModels:
    """Load a fresh set of models (about half a second) from `folder`, by default the installed
    package's; raise FaceModelsMissing if they cannot be loaded."""
    try:
        import dlib
    except ImportError:
        raise FaceModelsMissing(f"dlib is not installed: {_REMEDY}") from None
    folder = folder or models_folder()
    for name in (CNN_DETECTOR_FILE, LANDMARKS_FILE, EMBEDDER_FILE):
        if not (folder / name).is_file():
            raise FaceModelsMissing(f"Face model {name} not found in {folder}: {_REMEDY}")
    try:
        return FaceModels(
            detector=dlib.get_frontal_face_detector(),
            confirmer=dlib.cnn_face_detection_model_v1(str(folder / CNN_DETECTOR_FILE)),
            landmarks=dlib.shape_predictor(str(folder / LANDMARKS_FILE)),
            embedder=dlib.face_recognition_model_v1(str(folder / EMBEDDER_FILE)),
        )
    except RuntimeError as exc:  # a truncated or foreign .dat file
        raise FaceModelsMissing(f"Face models in {folder} unreadable ({exc}): {_REMEDY}") from None
