"""Tiny insightface face-model packs (buffalo_l, antelopev2), written as ONNX files in code, so
that insightface's own loading, detection and recognition run in the tests.

Each pack has the hub mirror's layout and file names, and two networks that insightface routes
by their shapes, as it does the real ones:

- a detector with SCRFD's nine outputs (scores, box and keypoint distances at strides 8, 16
  and 32, two anchors per place) for a 640 × 640 input. It finds one face, at fixed places in
  its input, whose score is the input's mean brightness: an all-black image has no face;
- a recogniser reading a 112 × 112 aligned crop: its mean colour through a fixed random matrix,
  a 512-d vector whose length is in ArcFace's range (about 20-30). Each pack has its own matrix,
  so an embedding tells which pack made it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DETECTOR_SIDE = 640
STRIDES = (8, 16, 32)
ANCHORS = 2
# The face, in the detector's 640 × 640 input: its box and insightface's five keypoints (the
# subject's right eye, left eye, nose, right and left mouth corners).
FACE_BOX = (200.0, 180.0, 440.0, 460.0)
FACE_KEYPOINTS = ((260.0, 280.0), (380.0, 280.0), (320.0, 340.0), (272.0, 400.0), (368.0, 400.0))
# Where the face is found: the anchor at the middle of the stride-32 grid.
_CENTRE = (320.0, 320.0)

# The folder of each pack, relative to the models root, and its two files (as downloaded).
PACKS: dict[str, tuple[str, str, str]] = {
    "buffalo_l": ("buffalo_l/models/buffalo_l", "det_10g.onnx", "w600k_r50.onnx"),
    "antelopev2": ("antelopev2", "scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}
_SEEDS = {"buffalo_l": 1, "antelopev2": 2}


def build(root: Path) -> None:
    """Write both packs under `root` (deterministic)."""
    for pack, (folder, detector, recogniser) in PACKS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        _save(_detector(), root / folder / detector)
        _save(_recogniser(recognition_matrix(pack)), root / folder / recogniser)


def recognition_matrix(pack: str) -> tuple[np.ndarray, np.ndarray]:
    """The pack's recogniser: embedding = mean colour (3, in -1..1) @ weight + bias."""
    rng = np.random.default_rng(_SEEDS[pack])
    weight = rng.standard_normal((3, 512)).astype(np.float32)
    bias = rng.standard_normal(512).astype(np.float32)
    return weight, bias


def _detector() -> object:
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["input.1"], ["brightness"], keepdims=0)]
    initialisers = []
    outputs = []
    names = []
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in STRIDES:
            grid = DETECTOR_SIDE // stride
            places = grid * grid * ANCHORS
            scale = np.zeros((places, width), dtype=np.float32)
            offset = np.zeros((places, width), dtype=np.float32)
            if stride == STRIDES[-1]:
                anchor = ((grid // 2) * grid + grid // 2) * ANCHORS
                if kind == "score":
                    scale[anchor], offset[anchor] = 1.0, 1.0
                else:
                    offset[anchor] = _distances(kind, stride)
            name = f"{kind}_{stride}"
            initialisers += [
                numpy_helper.from_array(scale, f"{name}_scale"),
                numpy_helper.from_array(offset, f"{name}_offset"),
            ]
            nodes += [
                helper.make_node("Mul", ["brightness", f"{name}_scale"], [f"{name}_scaled"]),
                helper.make_node("Add", [f"{name}_scaled", f"{name}_offset"], [name]),
            ]
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [places, width]))
            names.append(name)
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 640, 640])],
        outputs,
        initialisers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _distances(kind: str, stride: int) -> np.ndarray:
    """SCRFD's outputs are distances from the anchor's centre, in strides."""
    cx, cy = _CENTRE
    if kind == "bbox":
        left, top, right, bottom = FACE_BOX
        return np.array([cx - left, cy - top, right - cx, bottom - cy], np.float32) / stride
    points = np.array(FACE_KEYPOINTS, dtype=np.float32) - np.array(_CENTRE, dtype=np.float32)
    return points.reshape(-1) / stride


def _recogniser(matrix: tuple[np.ndarray, np.ndarray]) -> object:
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = matrix
    nodes = [
        helper.make_node("GlobalAveragePool", ["input.1"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["colour"]),
        helper.make_node("MatMul", ["colour", "weight"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, 512])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _save(model: object, path: Path) -> None:
    import onnx

    onnx.save(model, str(path))
