"""The intake verdict on a selfie: one usable face, or why not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from bot.faces.detect import Face
from bot.faces.rules import FaceRules

__all__ = ["SelfieCheck", "SelfieVerdict", "counted", "judge"]


class SelfieVerdict(StrEnum):
    OK = "ok"
    NO_FACE = "no_face"
    SEVERAL = "several"
    TOO_SMALL = "too_small"


@dataclass(frozen=True)
class SelfieCheck:
    """The verdict, how many faces were found, the short side of the largest face in the
    image's own pixels (None without a face), and how long the check took."""

    verdict: SelfieVerdict
    faces: int
    face_px: int | None
    seconds: float


def counted(faces: Sequence[Face], rules: FaceRules) -> list[Face]:
    """The faces that count, sorted largest first: the largest, and the others that the
    detector scores at least `rules.second_face_score`.

    Why a score for the others: at some scales HOG also finds the mission patch on the example
    selfie's suit (score 0.04-0.32, a box the same size as the face's), and boxes of the same
    size never dominate each other.
    """
    return [face for n, face in enumerate(faces) if n == 0 or face.score >= rules.second_face_score]


def judge(faces: Sequence[Face], rules: FaceRules) -> SelfieVerdict:
    """The verdict on the faces that count, sorted largest first (see `counted`)."""
    if not faces:
        return SelfieVerdict.NO_FACE
    largest = faces[0]
    if len(faces) > 1 and largest.area_px < rules.dominance * faces[1].area_px:
        return SelfieVerdict.SEVERAL
    if largest.short_side_px < rules.min_face_px:
        return SelfieVerdict.TOO_SMALL
    return SelfieVerdict.OK
