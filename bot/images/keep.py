"""Checking an image and storing it, in one call to a decode worker: where the image store is a
folder on this machine, the worker that checked the image writes it there itself, so the
service neither sends the bytes to a thread of its own nor writes them under its GIL.

The worker is no boundary of privilege (it runs as the service's user); what it answers is
still read with `bot.images.wire`'s allow-list.
"""

from __future__ import annotations

from bot.images.sanitise import ImageInfo, SanitisedImage, inspect_output, sanitise_selfie
from storage.imagestore import FolderWriter


def sanitise_and_keep(
    data: bytes, writer: FolderWriter, key: str, *, subject: str, **limits: int
) -> SanitisedImage:
    """`sanitise_selfie`, the result written at `key`."""
    image = sanitise_selfie(data, subject=subject, **limits)
    writer.put(image.data, image.content_type, key)
    return image


def inspect_and_keep(data: bytes, writer: FolderWriter, **limits: int) -> tuple[ImageInfo, str]:
    """`inspect_output`, and the image's key once written, content-addressed."""
    info = inspect_output(data, **limits)
    return info, writer.put(data, info.content_type)
