"""The thresholds the face check and the identity gate apply."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FaceRules"]


@dataclass(frozen=True)
class FaceRules:
    """How faces are judged.

    `dominance`: one face of several is the subject when its area is at least this many times
    the next largest. `min_face_px`: the subject's face must be at least this big on its short
    side, in the image's own pixels. `threshold`: dlib's distance at or under which two faces
    are the same person (0.6 is dlib's published value). `detect_side`: the long side, in
    pixels, every image is resized to before detection and embedding.
    """

    dominance: float = 2.0
    min_face_px: int = 64
    threshold: float = 0.6
    detect_side: int = 640

    def __post_init__(self) -> None:
        if self.dominance < 1:
            raise ValueError("dominance must be at least 1")
        if self.min_face_px < 1:
            raise ValueError("min_face_px must be at least 1")
        if not 0 <= self.threshold <= 2:
            raise ValueError("threshold must be between 0 and 2")
        if self.detect_side < 64:
            raise ValueError("detect_side must be at least 64")
