"""FPN level mapping (FPN paper eq. 1) as each framework rounds it."""

from __future__ import annotations

import numpy as np

from .sampling import check_array
from .table import lookup

# --- FPN level mapping (FPN paper eq. 1, as each framework rounds it) ----------------

_LEVEL_SOURCES = {
    "torchvision": "torchvision/ops/poolers.py LevelMapper: floor(4 + log2(sqrt(w h) / 224) "
    "+ 1e-6)",
    "detectron2": "detectron2/modeling/poolers.py assign_boxes_to_levels: floor(4 + "
    "log2(sqrt(area) / 224 + eps)), eps = sys.float_info.epsilon",
    "mmdet": "mmdet SingleRoIExtractor.map_roi_levels: k_min + floor(log2(sqrt(w h) / 56 + "
    "1e-6)) (finest_scale 56, level 0 = the first map given)",
    "matterport": "matterport mrcnn/model.py PyramidROIAlign: 4 + tf.round(log2(sqrt(h w) / "
    "(224 / sqrt(image_area)))), boxes normalised by utils.norm_boxes",
}


def level_mapping_names() -> list[str]:
    """The level-mapping rules ``levels`` knows: torchvision, detectron2, mmdet, matterport."""
    return list(_LEVEL_SOURCES)


def levels(name, boxes, image_size, k_min=2, k_max=5):
    """The pyramid level (k_min..k_max, e.g. 2 = P2) each box reads under rule ``name``.

    boxes: (K, 4) x1, y1, x2, y2, input-image pixels; computed in float32 unless float64
        is given, as the frameworks compute in the boxes' dtype. image_size: (height, width).
    Returns (K,) int64; a degenerate box (zero or negative area) goes to k_min. matterport
    first normalises like its utils.norm_boxes, (y1, x1, y2 - 1, x2 - 1) / (size - 1), and
    rounds with tf.round (halves to even); the others floor.
    """
    lookup(_LEVEL_SOURCES, name, "level mapping")
    boxes = check_array(boxes, "boxes", 2, "(K, 4) x1, y1, x2, y2 array")
    if boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4) x1, y1, x2, y2; got shape {boxes.shape}")
    t = np.float64 if boxes.dtype == np.float64 else np.float32
    boxes, (height, width) = boxes.astype(t), (int(s) for s in image_size)
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "torchvision":
            k = np.floor(t(4) + np.log2(side / t(224)) + t(1e-6))
        elif name == "detectron2":  # eps is a Python float added to a float32 tensor
            k = np.floor(t(4) + np.log2(side / t(224) + t(np.finfo(np.float64).eps)))
        elif name == "mmdet":
            k = k_min + np.floor(np.log2(side / t(56) + t(1e-6)))
        else:
            h = (boxes[:, 3] - t(1) - boxes[:, 1]) / t(height - 1)
            w = (boxes[:, 2] - t(1) - boxes[:, 0]) / t(width - 1)
            ratio = np.sqrt(h * w) / (t(224) / np.sqrt(t(height * width)))
            k = t(4) + np.round(np.log(ratio) / np.log(t(2)))  # log2_graph: log(x) / log(2)
    k = np.nan_to_num(k, nan=k_min, neginf=k_min, posinf=k_max)
    return np.clip(k, k_min, k_max).astype(np.int64)
