"""The intake verdict on a selfie: one usable face, or why not."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from bot.faces.detect import Face
from bot.faces.rules import FaceRules

__all__ = [
    "MAX_CONFIRMATIONS",
    "SelfieCheck",
    "SelfieVerdict",
    "faces_that_count",
    "judge",
    "subject_of",
]

# The most faces confirmed per selfie (each costs 160-300 ms of CPU): a photo with more
# candidates than this that none confirms is judged on its largest face.
MAX_CONFIRMATIONS = 4


class SelfieVerdict(StrEnum):
    OK = "ok"
    NO_FACE = "no_face"
    SEVERAL = "several"
    TOO_SMALL = "too_small"


@dataclass(frozen=True)
class SelfieCheck:
    """The verdict; how many faces count (see `faces_that_count`: 0, 1, or 2 when a second
    one was confirmed, however many more there are); the short side of the subject's face
    (the largest that counts) in the image's own pixels (None without a face); and how long
    the check took."""

    verdict: SelfieVerdict
    faces: int
    face_px: int | None
    seconds: float


def faces_that_count(
    faces: Sequence[Face], rules: FaceRules, confirm: Callable[[Face], bool]
) -> list[Face]:
    """The faces that count, of those HOG found (sorted largest first), largest first: the
    subject always, and the first other face that `confirm` (the CNN detector) confirms.

    Only the faces the largest does not dominate by area can change the verdict; among them
    the one HOG is surest of is the subject, and the others are confirmed in order, largest
    first, at most MAX_CONFIRMATIONS, stopping at the first confirmed (the selfie has several
    faces then). A face the largest dominates is neither confirmed nor counted.

    Why confirm: HOG at threshold 0 finds the mission patch on the example selfie's suit at
    some scales, in a box about the face's size and with a score (up to 0.38) above some real
    faces' (-0.05), so neither area nor score alone tells a second face from it. Why the
    surest is the subject rather than the largest: at some scales the patch's box is the
    larger (88 px against the face's 73 at 430 px), while the face scores 1.0-1.6 and the
    patch at most 0.38.
    """
    if not faces:
        return []
    comparable = _comparable(faces, rules)
    subject = max(comparable, key=lambda face: face.score)
    rivals = [face for face in comparable if face is not subject]
    for face in rivals[:MAX_CONFIRMATIONS]:
        if confirm(face):
            return sorted([subject, face], key=lambda face: face.area_px, reverse=True)
    return [subject]


def subject_of(faces: Sequence[Face], rules: FaceRules) -> Face | None:
    """The face taken as the person's, of those HOG found (sorted largest first): among the
    faces the largest does not dominate, the one HOG is surest of (see `faces_that_count`).
    The identity gate embeds this face of the selfie and of each output."""
    if not faces:
        return None
    return max(_comparable(faces, rules), key=lambda face: face.score)


def _comparable(faces: Sequence[Face], rules: FaceRules) -> list[Face]:
    largest = faces[0]
    return [largest, *(f for f in faces[1:] if largest.area_px < rules.dominance * f.area_px)]


def judge(faces: Sequence[Face], rules: FaceRules) -> SelfieVerdict:
    """The verdict on the faces that count, sorted largest first (see `faces_that_count`)."""
    if not faces:
        return SelfieVerdict.NO_FACE
    largest = faces[0]
    if len(faces) > 1 and largest.area_px < rules.dominance * faces[1].area_px:
        return SelfieVerdict.SEVERAL
    if largest.short_side_px < rules.min_face_px:
        return SelfieVerdict.TOO_SMALL
    return SelfieVerdict.OK
