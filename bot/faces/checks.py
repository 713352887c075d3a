"""The face check on intake and the identity check on output, as plain synchronous functions.

`FaceToolkit` runs them in its worker processes; tests and the benchmark may call them
directly.
"""

from __future__ import annotations

import time

from bot.faces.confirm import confirmed
from bot.faces.detect import Face, find_faces
from bot.faces.identity import Embedding, IdentityScore, distance, embed
from bot.faces.models import FaceModels
from bot.faces.picture import decode
from bot.faces.rules import FaceRules
from bot.faces.verdict import SelfieCheck, faces_that_count, judge

__all__ = ["check_selfie", "largest_face_embedding", "score_output"]


def check_selfie(models: FaceModels, image: bytes, rules: FaceRules) -> SelfieCheck:
    """Judge a sanitised selfie: one usable face, none, several, or one too small."""
    started = time.perf_counter()
    picture = decode(image, rules.detect_side)

    def confirm(face: Face) -> bool:
        return confirmed(models.confirmer, picture, face)

    faces = faces_that_count(find_faces(models.detector, picture), rules, confirm)
    verdict = judge(faces, rules)
    return SelfieCheck(
        verdict=verdict,
        faces=len(faces),
        face_px=faces[0].short_side_px if faces else None,
        seconds=time.perf_counter() - started,
    )


def largest_face_embedding(models: FaceModels, image: bytes, rules: FaceRules) -> Embedding | None:
    """The embedding of the image's largest face, or None if it has none."""
    picture = decode(image, rules.detect_side)
    faces = find_faces(models.detector, picture)
    return embed(models, picture, faces[0]) if faces else None


def score_output(
    models: FaceModels, reference: Embedding | None, output: bytes, rules: FaceRules
) -> IdentityScore:
    """Compare an output's largest face with the selfie's embedding (`reference`)."""
    started = time.perf_counter()
    if reference is None:
        return IdentityScore(distance=None, passed=None, seconds=time.perf_counter() - started)
    embedding = largest_face_embedding(models, output, rules)
    measured = None if embedding is None else distance(reference, embedding)
    passed = measured is not None and measured <= rules.threshold
    return IdentityScore(distance=measured, passed=passed, seconds=time.perf_counter() - started)
