"""What the identity gate's check of one output returns to the bot: a distance and a verdict,
never an embedding. Free of numpy and dlib, which only the face workers load."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IdentityScore"]


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
