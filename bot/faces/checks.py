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
from bot.faces.verdict import SelfieCheck, faces_that_count, judge, subject_of

__all__ = ["check_selfie", "score_output", "subject_embedding"]


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


def subject_embedding(models: FaceModels, image: bytes, rules: FaceRules) -> Embedding | None:
    """The embedding of the image's subject (the face the intake check takes as the person's,
    see `subject_of`), or None if it has no face."""
    picture = decode(image, rules.detect_side)
    subject = subject_of(find_faces(models.detector, picture), rules)
    return None if subject is None else embed(models, picture, subject)


def score_output(
    models: FaceModels, reference: Embedding | None, output: bytes, rules: FaceRules
) -> IdentityScore:
    """Compare an output's subject with the selfie's embedding (`reference`)."""
    started = time.perf_counter()
    if reference is None:
        return IdentityScore(distance=None, passed=None, seconds=time.perf_counter() - started)
    embedding = subject_embedding(models, output, rules)
    measured = None if embedding is None else distance(reference, embedding)
    passed = measured is not None and measured <= rules.threshold
    return IdentityScore(distance=measured, passed=passed, seconds=time.perf_counter() - started)
