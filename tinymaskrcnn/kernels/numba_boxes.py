"""Numba CPU kernels for ``tinymaskrcnn.boxes``: box_iou, nms, batched_nms, box_decode.

Each public function receives what ``boxes.py`` prepared: validated arrays (same
floating dtype, finite, x1 <= x2) and, for NMS, the score order to visit boxes in.

Bit-for-bit agreement with the reference matters for NMS (a rounding difference can flip
a keep/suppress decision), so every kernel computes in the boxes' dtype with the
reference's order of operations. Numba types float literals as float64, so constants are
made with ``dtype.type(...)``; without that, float32 inputs would silently be computed in
float64.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

# Boxes are resolved in blocks of this many (sorted) boxes: each block is first tested in
# parallel against every box kept so far, then resolved within itself sequentially.
_NMS_BLOCK = 256

# Below these sizes the work runs on one thread: starting a parallel region costs ~10 us
# on a quiet machine and a scheduler time slice (ms) when another process holds a core,
# which is more than small problems take in total. Each kernel is compiled both ways
# from the same Python function (prange is range when parallel=False).
_PARALLEL_MIN_PAIRS = 1 << 18  # IoU entries
_PARALLEL_MIN_BOXES = 1 << 15  # decoded boxes
# NMS opens one parallel region per block of _NMS_BLOCK boxes. When other processes
# share the cores every region waits for a descheduled thread: on the loaded 2-core
# development machine 5000 boxes took 190 ms in parallel against 15 ms on one thread
# (benchmarks/ops.py prints both paths). Hence the high bar.
_PARALLEL_MIN_NMS = 16384


def _compile(fn):
    # The serial twin gets its own name: Numba's on-disk cache is keyed by the function's
    # qualified name and signature, not by the compile flags.
    serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial")
    serial.__qualname__ = fn.__qualname__ + "_serial"
    return njit(parallel=True, cache=True)(fn), njit(cache=True)(serial)


@njit(inline="always")
def _columns(boxes):
    """x1, y1, x2, y2 and area of (N, 4) boxes, each a contiguous (N,) array.

    Structure-of-arrays copies keep the inner loops that sweep over boxes on contiguous
    memory, which lets LLVM vectorise them.
    """
    x1 = np.ascontiguousarray(boxes[:, 0])
    y1 = np.ascontiguousarray(boxes[:, 1])
    x2 = np.ascontiguousarray(boxes[:, 2])
    y2 = np.ascontiguousarray(boxes[:, 3])
    return x1, y1, x2, y2, (x2 - x1) * (y2 - y1)


def _iou_rows(boxes1, boxes2, out):
    zero = boxes1.dtype.type(0)
    bx1, by1, bx2, by2, barea = _columns(boxes2)
    for i in prange(boxes1.shape[0]):
        ax1, ay1, ax2, ay2 = boxes1[i, 0], boxes1[i, 1], boxes1[i, 2], boxes1[i, 3]
        aarea = (ax2 - ax1) * (ay2 - ay1)
        row = out[i]
        for j in range(bx1.shape[0]):
            w = max(min(ax2, bx2[j]) - max(ax1, bx1[j]), zero)
            h = max(min(ay2, by2[j]) - max(ay1, by1[j]), zero)
            inter = w * h
            union = aarea + barea[j] - inter
            row[j] = inter / union if union > zero else zero


_iou_rows_parallel, _iou_rows_serial = _compile(_iou_rows)


def box_iou(boxes1, boxes2):
    """IoU of every pair, (N, 4) x (M, 4) -> (N, M); see ``boxes.box_iou``."""
    out = np.empty((boxes1.shape[0], boxes2.shape[0]), dtype=boxes1.dtype)
    if out.size:
        run = _iou_rows_parallel if out.size >= _PARALLEL_MIN_PAIRS else _iou_rows_serial
        run(np.ascontiguousarray(boxes1), np.ascontiguousarray(boxes2), out)
    return out


@njit(inline="always")
def _suppresses(i, j, x1, y1, x2, y2, area, threshold, zero):
    # Same arithmetic as boxes._pairwise_iou with box i (the higher-scoring one) first.
    w = max(min(x2[i], x2[j]) - max(x1[i], x1[j]), zero)
    h = max(min(y2[i], y2[j]) - max(y1[i], y1[j]), zero)
    inter = w * h
    union = area[i] + area[j] - inter
    iou = inter / union if union > zero else zero
    return iou > threshold  # float vs float64 threshold, as torchvision compares


def _nms_sorted(boxes, labels, use_labels, threshold):
    """Greedy NMS of boxes already sorted by decreasing score; returns kept positions.

    A box is kept iff no kept box before it suppresses it. That "pull" form of the greedy
    rule lets every box of a block test the earlier kept boxes independently (in parallel,
    stopping at the first suppressor), and needs O(N) memory.
    """
    n = boxes.shape[0]
    zero = boxes.dtype.type(0)
    x1, y1, x2, y2, area = _columns(boxes)
    kept = np.empty(n, dtype=np.int64)
    n_kept = 0
    alive = np.empty(_NMS_BLOCK, dtype=np.bool_)
    for start in range(0, n, _NMS_BLOCK):
        stop = min(start + _NMS_BLOCK, n)
        n_before = n_kept
        for t in prange(stop - start):
            j = start + t
            alive[t] = True
            for q in range(n_before):
                i = kept[q]
                if use_labels and labels[i] != labels[j]:
                    continue
                if _suppresses(i, j, x1, y1, x2, y2, area, threshold, zero):
                    alive[t] = False
                    break
        for t in range(stop - start):
            if not alive[t]:
                continue
            j = start + t
            suppressed = False
            for q in range(n_before, n_kept):
                i = kept[q]
                if use_labels and labels[i] != labels[j]:
                    continue
                if _suppresses(i, j, x1, y1, x2, y2, area, threshold, zero):
                    suppressed = True
                    break
            if not suppressed:
                kept[n_kept] = j
                n_kept += 1
    return kept[:n_kept]


_nms_sorted_parallel, _nms_sorted_serial = _compile(_nms_sorted)


def _run_nms(boxes, order, labels, use_labels, iou_threshold):
    n = len(order)
    run = _nms_sorted_parallel if n >= _PARALLEL_MIN_NMS else _nms_sorted_serial
    sorted_labels = np.ascontiguousarray(labels[order] if use_labels else labels)
    kept = run(np.ascontiguousarray(boxes[order]), sorted_labels, use_labels, iou_threshold)
    return order[kept]


def nms(boxes, order, iou_threshold):
    """Greedy NMS of (N, 4) boxes visited in ``order`` (``boxes.score_order``);
    -> (K,) int64 indices by decreasing score; see ``boxes.nms``."""
    return _run_nms(boxes, order, np.zeros(1, np.int64), False, float(iou_threshold))


def batched_nms(boxes, order, idxs, iou_threshold):
    """NMS within each ``idxs`` category; -> (K,) int64 by decreasing score."""
    return _run_nms(boxes, order, idxs.astype(np.int64), True, float(iou_threshold))


def _decode_rows(deltas, anchors, weights, clip, out):
    half = deltas.dtype.type(0.5)
    wx, wy, ww, wh = weights[0], weights[1], weights[2], weights[3]
    for n in prange(deltas.shape[0]):
        aw = anchors[n, 2] - anchors[n, 0]
        ah = anchors[n, 3] - anchors[n, 1]
        ax = anchors[n, 0] + half * aw
        ay = anchors[n, 1] + half * ah
        for c in range(0, deltas.shape[1], 4):
            cx = deltas[n, c] / wx * aw + ax
            cy = deltas[n, c + 1] / wy * ah + ay
            half_w = half * (np.exp(min(deltas[n, c + 2] / ww, clip)) * aw)
            half_h = half * (np.exp(min(deltas[n, c + 3] / wh, clip)) * ah)
            out[n, c] = cx - half_w
            out[n, c + 1] = cy - half_h
            out[n, c + 2] = cx + half_w
            out[n, c + 3] = cy + half_h


_decode_rows_parallel, _decode_rows_serial = _compile(_decode_rows)


def box_decode(deltas, anchors, weights, bbox_xform_clip):
    """Decode (N, 4 k) deltas against (N, 4) anchors; see ``boxes.box_decode``."""
    dtype = deltas.dtype
    out = np.empty(deltas.shape, dtype=dtype)
    if out.size:
        run = _decode_rows_parallel if out.size // 4 >= _PARALLEL_MIN_BOXES else _decode_rows_serial
        run(
            np.ascontiguousarray(deltas),
            np.ascontiguousarray(anchors, dtype=dtype),
            np.asarray(weights, dtype=dtype),
            dtype.type(bbox_xform_clip),
            out,
        )
    return out
