"""A face's 128-d embedding and the distance between two of them.

An embedding is biometric data: it stays inside this package, never returned by the toolkit,
logged or stored. Only the distance leaves.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bot.faces.detect import Face
from bot.faces.models import FaceModels
from bot.faces.picture import Picture
from bot.faces.score import IdentityScore

__all__ = ["Embedding", "IdentityScore", "distance", "embed"]

Embedding = NDArray[np.float64]


def embed(models: FaceModels, picture: Picture, face: Face) -> Embedding:
    """The embedding of one face: its five landmarks align it, the ResNet describes it."""
    shape = models.landmarks(picture.pixels, face.box)
    return np.asarray(models.embedder.compute_face_descriptor(picture.pixels, shape))


def distance(a: Embedding, b: Embedding) -> float:
    return float(np.linalg.norm(a - b))
