"""Finding faces with dlib's HOG detector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.faces.picture import Picture

__all__ = ["Face", "find_faces"]


@dataclass(frozen=True)
class Face:
    """A face found in a Picture: dlib's box (in the picture's pixels), its size in the
    image's own pixels, and the detector's score (higher is surer)."""

    box: Any
    width_px: int
    height_px: int
    score: float

    @property
    def short_side_px(self) -> int:
        return min(self.width_px, self.height_px)

    @property
    def area_px(self) -> int:
        return self.width_px * self.height_px


def find_faces(detector: Any, picture: Picture) -> list[Face]:
    """The faces in the picture, largest first (the surer first among equal sizes: HOG's
    boxes come in a few sizes only).

    Detection runs at the picture's size; only if that finds nothing, once more at double
    the size, which finds faces down to about 40 px, so that a small face is reported as too
    small rather than as missing.
    """
    for upsample in (0, 1):
        boxes, scores, _kinds = detector.run(picture.pixels, upsample, 0.0)
        if boxes:
            break
    height, width = picture.pixels.shape[:2]
    faces = [
        _measure(box, score, width, height, picture.scale)
        for box, score in zip(boxes, scores, strict=True)
    ]
    return sorted(faces, key=lambda face: (face.area_px, face.score), reverse=True)


def _measure(box: Any, score: float, width: int, height: int, scale: float) -> Face:
    # A box may run past the picture's edge; only the part inside it counts.
    visible_width = min(box.right() + 1, width) - max(box.left(), 0)
    visible_height = min(box.bottom() + 1, height) - max(box.top(), 0)
    return Face(
        box=box,
        width_px=max(0, round(visible_width * scale)),
        height_px=max(0, round(visible_height * scale)),
        score=float(score),
    )
