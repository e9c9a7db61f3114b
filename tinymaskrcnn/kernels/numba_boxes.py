"""Numba CPU kernels for ``tinymaskrcnn.boxes``: box_iou, nms, batched_nms, box_decode.

Each public function receives what ``boxes.py`` prepared: validated arrays (same
floating dtype, finite, x1 <= x2) and, for NMS, the score order to visit boxes in.

Bit-for-bit agreement with the reference matters for NMS (a rounding difference can flip
a keep/suppress decision), so every kernel computes in the boxes' dtype with the
reference's order of operations. Numba types float literals as float64, so constants are
made with ``dtype.type(...)``; without that, float32 inputs would silently be computed in
float64.

NMS runs on one thread: greedy suppression is sequential, and with the spatial tiles
below it takes a few milliseconds for thousands of boxes, less than a parallel region
costs on a shared machine.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

# Below these sizes the work runs on one thread: starting a parallel region costs ~10 us
# on a quiet machine and a scheduler time slice (ms) when another process holds a core,
# which is more than small problems take in total. Each kernel is compiled both ways
# from the same Python function (prange is range when parallel=False).
_PARALLEL_MIN_PAIRS = 1 << 18  # IoU entries
_PARALLEL_MIN_BOXES = 1 << 15  # decoded boxes

# NMS keeps the boxes in tiles of _NMS_TILE spatial neighbours, and tiles in groups of
# _NMS_GROUP, each with its bounding box (see _nms_tiles). 64 lanes a tile was the
# fastest of 8..64 on 5000 boxes (the per-tile test costs more than lanes that find
# nothing); the group level skips most tiles with one test.
_NMS_TILE = 64
_NMS_GROUP = 4


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


@njit(cache=True)
def _tile_layout(x1, y1, x2, y2, category, n_categories, tile):
    """Position of each box in the tiled layout: by category, then by grid cell.

    The cells of a grid over the boxes' centres (about one tile's worth of boxes a cell)
    are visited column by column, up one column and down the next, so consecutive
    positions, and thus the boxes of one tile, lie close together. The layout only
    decides which boxes share a tile, never a result.
    """
    n = x1.shape[0]
    n_tiles = (n + tile - 1) // tile
    cols = max(1, int(np.sqrt(n_tiles)))
    rows = max(1, (n_tiles + cols - 1) // cols)
    lo_x, hi_x = np.float64(x1.min()), np.float64(x2.max())
    lo_y, hi_y = np.float64(y1.min()), np.float64(y2.max())
    # Centres as 0.5 x1 + 0.5 x2 and scales clamped: finite float64 boxes near the
    # largest float must not overflow into a NaN cell.
    scale_x = cols / (hi_x - lo_x) if hi_x - lo_x > 0 else 0.0
    scale_y = rows / (hi_y - lo_y) if hi_y - lo_y > 0 else 0.0
    cells = cols * rows
    key = np.empty(n, np.int64)
    start = np.zeros(n_categories * cells + 1, np.int64)
    for r in range(n):
        u = (0.5 * np.float64(x1[r]) + 0.5 * np.float64(x2[r]) - lo_x) * scale_x
        v = (0.5 * np.float64(y1[r]) + 0.5 * np.float64(y2[r]) - lo_y) * scale_y
        col = int(min(u, cols - 1.0)) if u > 0 else 0
        row = int(min(v, rows - 1.0)) if v > 0 else 0
        if col % 2:
            row = rows - 1 - row
        key[r] = category[r] * cells + col * rows + row
        start[key[r] + 1] += 1
    for k in range(n_categories * cells):
        start[k + 1] += start[k]
    position = np.empty(n, np.int64)
    for r in range(n):  # a counting sort, stable
        position[r] = start[key[r]]
        start[key[r]] += 1
    return position


@njit(inline="always")
def _suppress_in_tile(
    base, ax1, ay1, ax2, ay2, a_area, a_rank, a_category, threshold,
    tx1, ty1, tx2, ty2, t_area, t_rank, t_category, alive,
):  # fmt: skip
    """Clear ``alive`` for the boxes of one tile that the kept box ``a`` suppresses.

    Every lane is computed, without branches, and indexed unsigned (a signed index gets
    Numba's negative wrap-around check, which keeps LLVM from vectorising the loop).
    """
    zero = tx1.dtype.type(0)
    a_rank, a_category = np.int32(a_rank), np.int32(a_category)
    first = np.uint64(base)
    for lane in range(_NMS_TILE):
        q = first + np.uint64(lane)
        # boxes._pairwise_iou's arithmetic, the kept (higher-scoring) box first.
        w = max(min(ax2, tx2[q]) - max(ax1, tx1[q]), zero)
        h = max(min(ay2, ty2[q]) - max(ay1, ty1[q]), zero)
        inter = w * h
        union = a_area + t_area[q] - inter
        iou = inter / union if union > zero else zero
        hit = (iou > threshold) & (t_rank[q] > a_rank) & (t_category[q] == a_category)
        alive[q] = alive[q] & (not hit)


def _nms_tiles(x1, y1, x2, y2, category, n_categories, threshold, evaluations):
    """Greedy NMS of boxes sorted by decreasing score (rank r = row r); returns kept ranks.

    The greedy rule as written ("keep the best remaining box, remove what it overlaps by
    more than the threshold"), with the removal restricted to boxes that can overlap:
    the boxes sit in tiles of _NMS_TILE spatial neighbours (``_tile_layout``), each tile
    and each group of _NMS_GROUP tiles with its bounding box, and a kept box tests only
    the tiles whose bounding box it overlaps with positive area. Every box of a skipped
    tile has zero intersection with it, so IoU 0, which is never above a threshold >= 0:
    the keep list is exactly the reference's. Within a tile all lanes are computed
    without branches (LLVM vectorises the loop); ``evaluations[0]`` counts those lanes.

    ``threshold`` is in the boxes' dtype, chosen by the caller so that ``iou >
    threshold`` decides exactly as the reference's float64 comparison.
    """
    n = x1.shape[0]
    tile, group = _NMS_TILE, _NMS_GROUP
    n_tiles = (n + tile - 1) // tile
    size = n_tiles * tile
    position = _tile_layout(x1, y1, x2, y2, category, n_categories, tile)
    # Tiled structure-of-arrays copies; padding lanes have rank -1 (never suppressed).
    tx1 = np.zeros(size, x1.dtype)
    ty1 = np.zeros(size, x1.dtype)
    tx2 = np.zeros(size, x1.dtype)
    ty2 = np.zeros(size, x1.dtype)
    t_area = np.zeros(size, x1.dtype)
    # int32 lanes: twice as many per vector as int64 (N and categories < 2**31).
    t_rank = np.full(size, -1, np.int32)
    t_category = np.full(size, -1, np.int32)
    alive = np.zeros(size, np.bool_)
    for r in range(n):
        p = position[r]
        tx1[p], ty1[p], tx2[p], ty2[p] = x1[r], y1[r], x2[r], y2[r]
        t_area[p] = (x2[r] - x1[r]) * (y2[r] - y1[r])
        t_rank[p] = r
        t_category[p] = category[r]
        alive[p] = True
    # Bounding boxes of tiles, then of groups of tiles.
    n_groups = (n_tiles + group - 1) // group
    bx1, by1 = np.empty(n_tiles, x1.dtype), np.empty(n_tiles, x1.dtype)
    bx2, by2 = np.empty(n_tiles, x1.dtype), np.empty(n_tiles, x1.dtype)
    for t in range(n_tiles):
        lo, hi = t * tile, min(t * tile + tile, n)
        bx1[t], by1[t] = tx1[lo:hi].min(), ty1[lo:hi].min()
        bx2[t], by2[t] = tx2[lo:hi].max(), ty2[lo:hi].max()
    gx1, gy1 = np.empty(n_groups, x1.dtype), np.empty(n_groups, x1.dtype)
    gx2, gy2 = np.empty(n_groups, x1.dtype), np.empty(n_groups, x1.dtype)
    for g in range(n_groups):
        lo, hi = g * group, min(g * group + group, n_tiles)
        gx1[g], gy1[g] = bx1[lo:hi].min(), by1[lo:hi].min()
        gx2[g], gy2[g] = bx2[lo:hi].max(), by2[lo:hi].max()
    # A category's boxes are contiguous in the layout: only its tiles are visited.
    first_tile = np.zeros(n_categories, np.int64)
    last_tile = np.full(n_categories, -1, np.int64)
    for p in range(n - 1, -1, -1):
        first_tile[t_category[p]] = p // tile
    for p in range(n):
        last_tile[t_category[p]] = p // tile

    kept = np.empty(n, np.int64)
    n_kept = 0
    for r in range(n):
        p = position[r]
        if not alive[p]:
            continue
        kept[n_kept] = r
        n_kept += 1
        ax1, ay1, ax2, ay2, a_area, a_category = x1[r], y1[r], x2[r], y2[r], t_area[p], category[r]
        t_lo, t_hi = first_tile[a_category], last_tile[a_category]
        for g in range(t_lo // group, t_hi // group + 1):
            if not (gx1[g] < ax2 and gx2[g] > ax1 and gy1[g] < ay2 and gy2[g] > ay1):
                continue
            for t in range(max(g * group, t_lo), min(g * group + group, t_hi + 1)):
                if not (bx1[t] < ax2 and bx2[t] > ax1 and by1[t] < ay2 and by2[t] > ay1):
                    continue
                evaluations[0] += tile
                _suppress_in_tile(
                    t * tile, ax1, ay1, ax2, ay2, a_area, r, a_category, threshold,
                    tx1, ty1, tx2, ty2, t_area, t_rank, t_category, alive,
                )  # fmt: skip
    return kept[:n_kept]


_nms_tiles = njit(cache=True)(_nms_tiles)


def _threshold_in(dtype, iou_threshold):
    """The largest value of ``dtype`` <= the float64 threshold.

    torchvision compares its float IoU with a double threshold; for an IoU of ``dtype``,
    ``iou > t`` with this ``t`` decides exactly as ``float64(iou) > threshold`` (any
    value of ``dtype`` above ``t`` is at least its successor, which exceeds the
    threshold), and keeps the kernel's comparisons in one dtype.
    """
    t = dtype.type(iou_threshold)
    if float(t) > iou_threshold:
        t = np.nextafter(t, dtype.type(-np.inf))
    return t


def _run_nms(boxes, order, idxs, iou_threshold):
    """Kept indices (by decreasing score) and the count of IoU lanes evaluated.

    idxs: (N,) int64 categories, or None for plain NMS (one category).
    """
    evaluations = np.zeros(1, np.int64)
    n = len(order)
    if n == 0:
        return np.zeros(0, np.int64), 0
    if idxs is None:
        category, n_categories = np.zeros(n, np.int64), 1
    else:  # categories numbered 0.. for the layout's counting sort
        _, category = np.unique(idxs[order], return_inverse=True)
        category = category.astype(np.int64).reshape(-1)
        n_categories = int(category.max()) + 1
    sorted_boxes = boxes[order]
    kept = _nms_tiles(
        *(np.ascontiguousarray(sorted_boxes[:, i]) for i in range(4)),
        category,
        n_categories,
        _threshold_in(boxes.dtype, iou_threshold),
        evaluations,
    )
    return order[kept], int(evaluations[0])


def nms(boxes, order, iou_threshold):
    """Greedy NMS of (N, 4) boxes visited in ``order`` (``boxes.score_order``);
    -> (K,) int64 indices by decreasing score; see ``boxes.nms``."""
    return _run_nms(boxes, order, None, float(iou_threshold))[0]


def batched_nms(boxes, order, idxs, iou_threshold):
    """NMS within each ``idxs`` category; -> (K,) int64 by decreasing score."""
    return _run_nms(boxes, order, idxs.astype(np.int64), float(iou_threshold))[0]


def nms_iou_evaluations(boxes, order, iou_threshold, idxs=None):
    """How many IoUs ``nms`` (or ``batched_nms`` with ``idxs``) computes on these boxes.

    For benchmarks: the count of lanes the tiles evaluate, to set against the number
    of intersecting pairs (what an exact NMS must at least look at).
    """
    return _run_nms(boxes, order, None if idxs is None else idxs.astype(np.int64),
                    float(iou_threshold))[1]  # fmt: skip


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
