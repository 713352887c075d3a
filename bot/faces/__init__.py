"""Faces on the CPU with dlib: the intake check on a selfie and the identity gate on outputs.

`FaceToolkit` is what the bot uses (its work runs in its own worker processes); `checks` holds
the same work as plain synchronous functions. Embeddings never leave this package.
"""

from bot.faces.identity import IdentityScore
from bot.faces.models import FaceModelsMissing
from bot.faces.picture import UnreadableImage
from bot.faces.rules import FaceRules
from bot.faces.toolkit import FaceCheckFailed, FacesBusy, FaceToolkit
from bot.faces.verdict import SelfieCheck, SelfieVerdict

__all__ = [
    "FaceCheckFailed",
    "FaceModelsMissing",
    "FaceRules",
    "FaceToolkit",
    "FacesBusy",
    "IdentityScore",
    "SelfieCheck",
    "SelfieVerdict",
    "UnreadableImage",
]
