"""Images from outside: selfies and pose images users send, outputs generators return.

`sanitise`, `budget` and `structure` are the synchronous checks and re-encoding;
`workers` runs them in a small pool of decode processes, with a time limit each; `keep` has a
worker store what it checked, where the image store is a folder here.
"""

from bot.images.errors import ImageRejected
from bot.images.sanitise import (
    ImageInfo,
    SanitisedImage,
    check_upload,
    fit_within,
    heic_supported,
    inspect_output,
    sanitise_selfie,
)
from bot.images.workers import ImageWorkers, image_workers

__all__ = [
    "ImageInfo",
    "ImageRejected",
    "ImageWorkers",
    "SanitisedImage",
    "check_upload",
    "fit_within",
    "heic_supported",
    "image_workers",
    "inspect_output",
    "sanitise_selfie",
]
