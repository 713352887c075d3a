"""Faces on the CPU with dlib: the intake check on a selfie and the identity gate on outputs.

`FaceToolkit` is what the bot uses (its work runs in its own worker processes); `checks` holds
the same work as plain synchronous functions. Embeddings never leave this package. What this
module imports is free of numpy and dlib: the service process never loads them.
"""

from bot.faces.models import FaceModelsMissing
from bot.faces.rules import FaceRules
from bot.faces.score import IdentityScore
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
]
