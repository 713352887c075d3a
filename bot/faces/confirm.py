"""Confirming a face HOG found with dlib's CNN detector, on a small crop around it.

HOG at threshold 0 also finds face-like things: the mission patch on the example selfie's
suit, at some scales, in a box the size of the face's and scored higher (0.38) than some real
faces (−0.05). The CNN detector tells them apart (measured: no detection on the patch at any
scale tried, 0.94–1.08 on every face of t1.jpg), but costs about a second on a whole picture
on this CPU, so it only looks at a crop around the face it is asked about: 160–300 ms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from bot.faces.detect import Face
from bot.faces.picture import Picture

__all__ = ["CROP_WIDTH_PX", "confirmed"]

# The crop is resized to this width, so the face in it (half its width) is about 80 px
# whatever its size in the picture: the size the CNN was measured at, and cheap.
CROP_WIDTH_PX = 160


def confirmed(cnn: Any, picture: Picture, face: Face) -> bool:
    """Whether the CNN detector finds a face in the square of twice the face's width around
    its centre (clipped to the picture)."""
    box = face.box
    reach = box.right() - box.left()  # half the square's side: the box's width
    centre_x = (box.left() + box.right()) / 2
    centre_y = (box.top() + box.bottom()) / 2
    height, width = picture.pixels.shape[:2]
    left, top = max(0, round(centre_x - reach)), max(0, round(centre_y - reach))
    right, bottom = min(width, round(centre_x + reach)), min(height, round(centre_y + reach))
    if right - left < 2 or bottom - top < 2:
        return False
    crop = Image.fromarray(picture.pixels[top:bottom, left:right])
    factor = CROP_WIDTH_PX / crop.width
    crop = crop.resize(
        (CROP_WIDTH_PX, max(1, round(crop.height * factor))), Image.Resampling.BILINEAR
    )
    return len(cnn(np.asarray(crop), 0)) > 0
