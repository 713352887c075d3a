"""A face's 128-d embedding and the distance between two of them.

An embedding is biometric data: it stays inside this package, never returned by the toolkit,
logged or stored. Only the distance leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bot.faces.detect import Face
from bot.faces.models import FaceModels
from bot.faces.picture import Picture

__all__ = ["Embedding", "IdentityScore", "distance", "embed"]

Embedding = NDArray[np.float64]


@dataclass(frozen=True)
class IdentityScore:
    """One output compared with the selfie.

    `distance`: dlib's Euclidean distance between the two faces' embeddings (lower is closer;
    None when the output has no face). `passed`: the distance is at or under the threshold
    (False without a face in the output; None when the selfie has no face to compare with).
    `seconds`: this output's check (decode, detect, embed, compare).
    """

    distance: float | None
    passed: bool | None
    seconds: float


def embed(models: FaceModels, picture: Picture, face: Face) -> Embedding:
    """The embedding of one face: its five landmarks align it, the ResNet describes it."""
    shape = models.landmarks(picture.pixels, face.box)
    return np.asarray(models.embedder.compute_face_descriptor(picture.pixels, shape))


def distance(a: Embedding, b: Embedding) -> float:
    return float(np.linalg.norm(a - b))
