"""A deterministic stand-in for the face analyser (insightface needs real model files).

The embedding is derived from the image's pixels (a seeded RNG from a hash of the bytes), so two
different selfies give two different identities and the same selfie always gives the same one.
Like insightface's raw `embedding` it is not normalised: its length is between 20 and 30, as an
ArcFace recogniser's is, so that a method given the wrong one of raw and normalised shows it.
The five keypoints sit at fixed fractions of the image size; an all-black image has no face.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from backends.local.faces import Face, NoFaceFound

# The subject's right eye (image left), left eye, nose, right and left mouth corners, as
# fractions of (width, height): insightface's order.
_KEYPOINTS = np.array(
    [[0.36, 0.40], [0.64, 0.40], [0.50, 0.52], [0.39, 0.64], [0.61, 0.64]], dtype=np.float32
)


RAW_NORMS = (20.0, 30.0)


class StandInFaces:
    """Implements backends.local.faces.FaceAnalyser without any model. `pack` is the name of the
    face-model pack it stands for (the worker passes it), so that tests can see which one each
    operation was given."""

    def __init__(self, pack: str = "buffalo_l") -> None:
        self.pack = pack

    def analyse(self, image: Image.Image) -> Face:
        rgb = image.convert("RGB")
        pixels = np.asarray(rgb)
        if not pixels.any():
            raise NoFaceFound
        digest = hashlib.sha256(pixels.tobytes() + repr(rgb.size).encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        embedding = rng.standard_normal(512).astype(np.float32)
        embedding *= rng.uniform(*RAW_NORMS) / np.linalg.norm(embedding)
        width, height = rgb.size
        keypoints = _KEYPOINTS * np.array([width, height], dtype=np.float32)
        box = (0.2 * width, 0.2 * height, 0.8 * width, 0.85 * height)
        return Face(embedding=embedding, keypoints=keypoints, box=box)


DELAY_ENV = "HEADSHOT_TEST_FACE_DELAY"
MARKS_ENV = "HEADSHOT_TEST_FACE_MARKS"


class SlowStandInFaces(StandInFaces):
    """StandInFaces that first sleeps HEADSHOT_TEST_FACE_DELAY seconds, so that a job lasts long
    enough for a test to kill its worker mid-job. The variable holds the seconds, or the path of
    a file holding them, read at each analysis: a test may change it while the worker runs.

    With HEADSHOT_TEST_FACE_MARKS naming a folder, each analysis first leaves a file named after
    its process id there: the test learns which worker process took the job."""

    def analyse(self, image: Image.Image) -> Face:
        marks = os.environ.get(MARKS_ENV)
        if marks:
            (Path(marks) / str(os.getpid())).touch()
        time.sleep(_delay(os.environ.get(DELAY_ENV, "0")))
        return super().analyse(image)


def _delay(setting: str) -> float:
    path = Path(setting)
    return float(path.read_text() if path.is_absolute() else setting)
