"""Boxes: areas, IoU, the box coding of deltas, clipping and non-maximum suppression.

Faster R-CNN §3.1.2 (box parametrisation, eq. 2) and the NMS every detector since uses.
Boxes are x1, y1, x2, y2 in absolute pixels of whatever frame the caller is in
(docs/architecture.md, Boxes and box coding); width is ``x2 - x1`` with no ``+1``.

Shapes used below:
    N, M: boxes             k: boxes decoded per anchor (classes of the box head)
    K:    boxes kept by NMS

Every function here runs in the dtype it is given (float32 in the model, float64 in
gradient checks); integer boxes are computed in float32. The ops that have fast kernels
(``box_iou``, ``nms``, ``batched_nms``, ``box_decode``) validate their arguments here and
then hand them to the kernel of the active backend, which also accepts CUDA device arrays.
"""

from __future__ import annotations

import math

import numpy as np

from . import kernels

# --- validation (shared by every function of this module) -------------------------


def _as_float(x):
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(np.float32)


def check_boxes(boxes, name: str = "boxes"):
    """Check ``boxes`` is (N, 4) x1, y1, x2, y2 with finite values and x1 <= x2, y1 <= y2.

    Returns the boxes as a floating array (integers become float32). A CUDA device array
    is returned untouched after a shape and dtype check (its values stay on the device).
    """
    if kernels.is_device_array(boxes):
        if len(boxes.shape) != 2 or boxes.shape[1] != 4 or boxes.dtype.kind != "f":
            raise ValueError(
                f"{name} must be (N, 4) float [x1, y1, x2, y2]; "
                f"got device array {tuple(boxes.shape)} {boxes.dtype}"
            )
        return boxes
    boxes = _as_float(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be (N, 4) [x1, y1, x2, y2]; got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        bad = np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0]
        raise ValueError(f"{name} must be finite; row {bad} is {boxes[bad].tolist()}")
    flipped = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if flipped.any():
        bad = np.flatnonzero(flipped)[0]
        raise ValueError(
            f"{name} must have x1 <= x2 and y1 <= y2; row {bad} is {boxes[bad].tolist()}"
        )
    return boxes


def _check_scores(scores, n: int, name: str = "scores"):
    if kernels.is_device_array(scores):
        if tuple(scores.shape) != (n,):
            raise ValueError(f"{name} must be ({n},), one per box; got {tuple(scores.shape)}")
        return scores
    scores = _as_float(scores)
    if scores.shape != (n,):
        raise ValueError(f"{name} must be ({n},), one per box; got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} must be finite; got {scores[~np.isfinite(scores)][:3]}")
    return scores


def _check_threshold(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0; got {value!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {value}")
    return value


def _same_dtype(a, b):
    """Both arrays in their common floating dtype (float32 + float64 -> float64)."""
    if kernels.is_device_array(a) or kernels.is_device_array(b):
        if a.dtype != b.dtype:
            raise ValueError(f"device arrays must share a dtype; got {a.dtype} and {b.dtype}")
        return a, b
    dtype = np.result_type(a.dtype, b.dtype)
    return a.astype(dtype, copy=False), b.astype(dtype, copy=False)


def _reference_needs_host(*arrays):
    if any(kernels.is_device_array(a) for a in arrays):
        raise ValueError(
            f"CUDA device arrays need the 'cuda' backend; the active backend is "
            f"{kernels.get_backend()!r} (use_backend('cuda'), or copy them with .copy_to_host())"
        )


# --- areas and overlaps -------------------------------------------------------------


def box_area(boxes):
    """Area of each box.

    boxes: (N, 4) x1, y1, x2, y2, any frame.
    Returns (N,) in the boxes' dtype; 0 for a degenerate box.
    """
    boxes = check_boxes(boxes)
    _reference_needs_host(boxes)
    return _area(boxes)


def box_iou(boxes1, boxes2):
    """Intersection over union of every pair.

    boxes1: (N, 4) x1, y1, x2, y2; boxes2: (M, 4), same frame.
    Returns (N, M) in the common dtype; ``iou[i, j]`` is in [0, 1].
    Two degenerate boxes have union 0: their IoU is 0, not NaN (torchvision gives NaN).
    """
    boxes1, boxes2 = _same_dtype(check_boxes(boxes1, "boxes1"), check_boxes(boxes2, "boxes2"))
    fast = kernels.implementation("box_iou")
    if fast is not None:
        return fast(boxes1, boxes2)
    _reference_needs_host(boxes1, boxes2)
    return _pairwise_iou(boxes1, boxes2)


def _area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _pairwise_iou(boxes1, boxes2):
    area1 = _area(boxes1)
    area2 = _area(boxes2)
    top_left = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


# --- box coding (Faster R-CNN eq. 2) ------------------------------------------------

# exp(dw) is clamped here before it multiplies a width: log(1000 / 16) lets a box grow at
# most 62.5x its anchor, so a wild early-training delta cannot overflow to inf.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode boxes as deltas relative to reference boxes (anchors, proposals), and back.

    ``dx = wx (gx - ax) / aw``, ``dy = wy (gy - ay) / ah``, ``dw = ww log(gw / aw)``,
    ``dh = wh log(gh / ah)`` with centres ``x1 + 0.5 w``. The weights scale the deltas to
    about unit variance: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip: float = BBOX_XFORM_CLIP):
        weights = tuple(float(w) for w in weights)
        if len(weights) != 4 or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"weights must be 4 positive numbers (wx, wy, ww, wh); got {weights}")
        self.weights = weights
        self.bbox_xform_clip = _check_threshold(bbox_xform_clip, "bbox_xform_clip")

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"

    def encode(self, boxes, anchors):
        """Deltas that turn each anchor into its box.

        boxes:   (N, 4) target boxes (ground truth), x1 y1 x2 y2.
        anchors: (N, 4) reference boxes, same frame; row i pairs with row i of ``boxes``.
        Returns (N, 4) deltas (dx, dy, dw, dh) in the common dtype.
        Both must have positive widths and heights (the log and the divisions need them).
        """
        boxes, anchors = _same_dtype(check_boxes(boxes), check_boxes(anchors, "anchors"))
        _reference_needs_host(boxes, anchors)
        if boxes.shape != anchors.shape:
            raise ValueError(
                f"boxes and anchors must pair up row by row; got {boxes.shape} and {anchors.shape}"
            )
        for name, b in (("boxes", boxes), ("anchors", anchors)):
            thin = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
            if thin.any():
                row = np.flatnonzero(thin)[0]
                raise ValueError(
                    f"{name} to encode must have positive width and height; "
                    f"row {row} is {b[row].tolist()}"
                )
        wx, wy, ww, wh = (anchors.dtype.type(w) for w in self.weights)
        aw = anchors[:, 2] - anchors[:, 0]
        ah = anchors[:, 3] - anchors[:, 1]
        ax = anchors[:, 0] + 0.5 * aw
        ay = anchors[:, 1] + 0.5 * ah
        gw = boxes[:, 2] - boxes[:, 0]
        gh = boxes[:, 3] - boxes[:, 1]
        gx = boxes[:, 0] + 0.5 * gw
        gy = boxes[:, 1] + 0.5 * gh
        return np.stack(
            [wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * np.log(gw / aw), wh * np.log(gh / ah)],
            axis=1,
        )

    def decode(self, deltas, anchors):
        """Apply deltas to anchors.

        deltas:  (N, 4) or (N, 4 k) float (dx, dy, dw, dh) per box; the box head predicts
                 one set of four per class.
        anchors: (N, 4) reference boxes x1 y1 x2 y2; row i is the anchor of row i of deltas.
        Returns boxes of the shape of ``deltas``, same frame as the anchors, x1 <= x2.
        """
        return box_decode(deltas, anchors, self.weights, self.bbox_xform_clip)


def box_decode(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=BBOX_XFORM_CLIP):
    """``BoxCoder(weights, bbox_xform_clip).decode(deltas, anchors)``: the dispatchable op.

    deltas (N, 4 k), anchors (N, 4), weights 4 floats (wx, wy, ww, wh), bbox_xform_clip
    float: the kernels take exactly these arguments. Returns (N, 4 k) boxes.
    """
    anchors = check_boxes(anchors, "anchors")
    if kernels.is_device_array(deltas):
        if len(deltas.shape) != 2 or deltas.shape[1] % 4 or deltas.shape[1] == 0:
            raise ValueError(f"deltas must be (N, 4 k); got device array {tuple(deltas.shape)}")
    else:
        deltas = _as_float(deltas)
        if deltas.ndim != 2 or deltas.shape[1] % 4 or deltas.shape[1] == 0:
            raise ValueError(f"deltas must be (N, 4 k) (dx, dy, dw, dh) * k; got {deltas.shape}")
        if not np.isfinite(deltas).all():
            raise ValueError("deltas must be finite; got NaN or inf")
    if deltas.shape[0] != anchors.shape[0]:
        raise ValueError(
            f"deltas and anchors must have one row per anchor; got {tuple(deltas.shape)} "
            f"and {tuple(anchors.shape)}"
        )
    deltas, anchors = _same_dtype(deltas, anchors)
    weights = tuple(float(w) for w in weights)
    bbox_xform_clip = float(bbox_xform_clip)
    fast = kernels.implementation("box_decode")
    if fast is not None:
        return fast(deltas, anchors, weights, bbox_xform_clip)
    _reference_needs_host(deltas, anchors)
    wx, wy, ww, wh = (deltas.dtype.type(w) for w in weights)
    clip = deltas.dtype.type(bbox_xform_clip)
    anchors = anchors.astype(deltas.dtype, copy=False)
    aw = (anchors[:, 2] - anchors[:, 0])[:, None]
    ah = (anchors[:, 3] - anchors[:, 1])[:, None]
    ax = anchors[:, 0][:, None] + 0.5 * aw
    ay = anchors[:, 1][:, None] + 0.5 * ah
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = np.minimum(deltas[:, 2::4] / ww, clip)
    dh = np.minimum(deltas[:, 3::4] / wh, clip)
    cx = dx * aw + ax
    cy = dy * ah + ay
    half_w = 0.5 * (np.exp(dw) * aw)
    half_h = 0.5 * (np.exp(dh) * ah)
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=2)
    return boxes.reshape(deltas.shape)


# --- clipping and filtering ---------------------------------------------------------


def clip_boxes(boxes, image_size):
    """Clip boxes to the image: x to [0, width], y to [0, height].

    boxes: (N, 4) x1 y1 x2 y2 in the image's pixels. image_size: (height, width).
    Returns a new (N, 4) array of the same dtype.
    """
    boxes = check_boxes(boxes)
    _reference_needs_host(boxes)
    height, width = _check_image_size(image_size)
    out = boxes.copy()
    np.clip(out[:, 0::2], 0, width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, height, out=out[:, 1::2])
    return out


def _check_image_size(image_size):
    try:
        height, width = (float(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width); got {image_size!r}") from None
    if not (height >= 0 and width >= 0 and math.isfinite(height + width)):
        raise ValueError(f"image_size must be (height, width) >= 0; got {image_size!r}")
    return height, width


def remove_small_boxes(boxes, min_size):
    """Indices of the boxes whose width and height are both at least ``min_size``.

    boxes: (N, 4) x1 y1 x2 y2. Returns (K,) int64 indices in increasing order.
    """
    boxes = check_boxes(boxes)
    _reference_needs_host(boxes)
    min_size = _check_threshold(min_size, "min_size")
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    return np.flatnonzero((ws >= min_size) & (hs >= min_size)).astype(np.int64)


# --- non-maximum suppression --------------------------------------------------------


def score_order(scores):
    """Indices by decreasing score; equal scores keep increasing index (a stable sort).

    This is the order NMS visits boxes in and the order of its output; it matches
    torchvision's CPU sort on ties.
    """
    return np.argsort(-scores, kind="stable").astype(np.int64)


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression.

    boxes:  (N, 4) x1 y1 x2 y2, any frame.   scores: (N,) float, higher is better.
    iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box is
    strictly greater than this.
    Returns keep: (K,) int64 indices into ``boxes``, by decreasing score.
    """
    boxes = check_boxes(boxes)
    scores = _check_scores(scores, boxes.shape[0])
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    fast = kernels.implementation("nms")
    if fast is not None:
        return fast(boxes, score_order(kernels.to_host(scores)), iou_threshold)
    _reference_needs_host(boxes, scores)
    return _greedy_nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS run independently within each category: boxes of different ``idxs`` never
    suppress each other.

    boxes: (N, 4); scores: (N,); idxs: (N,) int category (or image, or level) of each box.
    Returns keep: (K,) int64 indices, by decreasing score over all categories (ties by index).

    No coordinate-offset trick (torchvision's fast path shifts each category's boxes
    apart, which loses float precision on large offsets): a box only tests the kept boxes
    of its own category, which is what the offset trick approximates.
    """
    boxes = check_boxes(boxes)
    scores = _check_scores(scores, boxes.shape[0])
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    if kernels.is_device_array(idxs):
        if tuple(idxs.shape) != (boxes.shape[0],) or idxs.dtype.kind not in "iu":
            raise ValueError(f"idxs must be ({boxes.shape[0]},) int; got device array {idxs.shape}")
    else:
        idxs = np.asarray(idxs)
        if idxs.shape != (boxes.shape[0],) or (idxs.size and idxs.dtype.kind not in "iu"):
            raise ValueError(
                f"idxs must be ({boxes.shape[0]},) int, one category per box; "
                f"got shape {idxs.shape} {idxs.dtype}"
            )
        idxs = idxs.astype(np.int64, copy=False)
    fast = kernels.implementation("batched_nms")
    if fast is not None:
        return fast(boxes, score_order(kernels.to_host(scores)), idxs, iou_threshold)
    _reference_needs_host(boxes, scores, idxs)
    return _greedy_nms(boxes, scores, idxs, iou_threshold)


def _greedy_nms(boxes, scores, idxs, iou_threshold):
    # Visit boxes by decreasing score; the best remaining one is kept and removes what it
    # overlaps by more than the threshold. Suppressed boxes leave the queue at once, so
    # they never suppress anything themselves (the greedy rule).
    order = score_order(scores)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        iou = _pairwise_iou(boxes[best : best + 1], boxes[rest])[0]
        # float64 comparison: torchvision compares the float IoU with a double threshold.
        suppressed = iou > np.float64(iou_threshold)
        if idxs is not None:
            suppressed &= idxs[rest] == idxs[best]
        order = rest[~suppressed]
    return np.array(keep, dtype=np.int64)


__all__ = [
    "BBOX_XFORM_CLIP",
    "BoxCoder",
    "batched_nms",
    "box_area",
    "box_decode",
    "box_iou",
    "check_boxes",
    "clip_boxes",
    "nms",
    "remove_small_boxes",
    "score_order",
]
