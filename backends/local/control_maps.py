"""The conditioning images the avatar's ControlNets read, drawn as their training data was.

- `keypoint_map`: InstantID's IdentityNet reads the five face keypoints drawn by its
  `draw_kps` (pipeline_stable_diffusion_xl_instantid.py): a limb from each point to the nose,
  an ellipse of half-width 4 px in the colour of its outer point at 60 %, then a dot of radius
  10 px on each point in full colour, on black, at the generation size.
- `head_pose_map`: the pose ControlNet reads OpenPose skeletons as controlnet_aux draws them
  (open_pose/util.py `draw_bodypose`): the COCO-18 colour of each point and limb, limbs at 60 %,
  half-width 4 px and dots of radius 4 px on a 512 px short side. The bundled backend has no
  body-pose model, so only the head's part is drawn, from the face keypoints: nose, neck and
  eyes, which is what a headshot's pose is mostly about.

Both draw with OpenCV's ellipse polygons, as the references do, so that the strokes have the
widths the networks saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

Colour = tuple[int, int, int]

# InstantID's colours for insightface's five keypoints, in their order: the subject's right
# eye, left eye, nose, right and left mouth corners.
KEYPOINT_COLOURS: tuple[Colour, ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
)
KEYPOINT_RADIUS = 10
KEYPOINT_STICK = 4
NOSE = 2

# OpenPose's COCO-18 colours of the points drawn here (controlnet_aux's table, index in
# brackets): nose [0], neck [1], right eye [14], left eye [15].
POSE_NOSE: Colour = (255, 0, 0)
POSE_NECK: Colour = (255, 85, 0)
POSE_RIGHT_EYE: Colour = (170, 0, 255)
POSE_LEFT_EYE: Colour = (255, 0, 255)
# Each limb takes the colour of its place in OpenPose's limb list, at 60 %: neck-nose is limb
# 12, nose-right eye limb 13, nose-left eye limb 15.
POSE_NECK_NOSE: Colour = (0, 0, 255)
POSE_NOSE_RIGHT_EYE: Colour = (85, 0, 255)
POSE_NOSE_LEFT_EYE: Colour = (255, 0, 255)
POSE_STICK = 4
POSE_RADIUS = 4
# controlnet_aux draws at a 512 px short side (its detect resolution).
POSE_DRAWN_AT = 512
LIMB_SHADE = 0.6


def keypoint_map(size: tuple[int, int], keypoints: np.ndarray) -> Image.Image:
    """The five keypoints as InstantID's IdentityNet was trained to read them, at `size`."""
    canvas = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    points = np.asarray(keypoints, dtype=np.float64)
    for outer in (0, 1, 3, 4):
        colour = _shaded(KEYPOINT_COLOURS[outer])
        _limb(canvas, points[outer], points[NOSE], KEYPOINT_STICK, colour)
    for point, colour in zip(points, KEYPOINT_COLOURS, strict=True):
        _dot(canvas, point, KEYPOINT_RADIUS, colour)
    return Image.fromarray(canvas)


def head_pose_map(size: tuple[int, int], keypoints: np.ndarray) -> Image.Image:
    """The head of an OpenPose skeleton (neck, nose, eyes) from the five face keypoints, with
    OpenPose's colours and stroke widths scaled to `size`'s short side."""
    points = np.asarray(keypoints, dtype=np.float64)
    right_eye, left_eye, nose, mouth_right, mouth_left = points
    mouth = (mouth_right + mouth_left) / 2
    # The neck (the shoulders' midpoint in OpenPose) sits about three nose-to-mouth lengths
    # below the nose.
    neck = nose + (mouth - nose) * 3.0
    scale = min(size) / POSE_DRAWN_AT
    stick, radius = max(1, round(POSE_STICK * scale)), max(1, round(POSE_RADIUS * scale))
    canvas = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    for start, end, colour in (
        (neck, nose, POSE_NECK_NOSE),
        (nose, right_eye, POSE_NOSE_RIGHT_EYE),
        (nose, left_eye, POSE_NOSE_LEFT_EYE),
    ):
        _limb(canvas, start, end, stick, _shaded(colour))
    for point, colour in (
        (nose, POSE_NOSE),
        (neck, POSE_NECK),
        (right_eye, POSE_RIGHT_EYE),
        (left_eye, POSE_LEFT_EYE),
    ):
        _dot(canvas, point, radius, colour)
    return Image.fromarray(canvas)


def _shaded(colour: Colour) -> Colour:
    return (
        int(colour[0] * LIMB_SHADE),
        int(colour[1] * LIMB_SHADE),
        int(colour[2] * LIMB_SHADE),
    )


def _limb(
    canvas: np.ndarray,
    start: Sequence[float],
    end: Sequence[float],
    half_width: int,
    colour: Colour,
) -> None:
    """A filled ellipse from `start` to `end`, `half_width` across on each side."""
    import cv2

    # The angle of start seen from end, as both references measure it (truncated to whole
    # degrees, so the direction decides a few edge pixels).
    dx, dy = float(start[0] - end[0]), float(start[1] - end[1])
    centre = (int((start[0] + end[0]) / 2), int((start[1] + end[1]) / 2))
    half_length = int(math.hypot(dx, dy) / 2)
    angle = int(math.degrees(math.atan2(dy, dx)))
    polygon = cv2.ellipse2Poly(centre, (half_length, half_width), angle, 0, 360, 1)
    cv2.fillConvexPoly(canvas, polygon, colour)


def _dot(canvas: np.ndarray, point: Sequence[float], radius: int, colour: Colour) -> None:
    import cv2

    cv2.circle(canvas, (int(point[0]), int(point[1])), radius, colour, thickness=-1)
