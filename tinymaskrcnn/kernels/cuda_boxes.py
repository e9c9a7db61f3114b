"""Numba CUDA kernels for ``tinymaskrcnn.boxes``: box_iou, nms, batched_nms, box_decode.

Host wrappers take NumPy arrays (copied to the GPU and the result copied back) or Numba
device arrays (the result stays on the device, so a pipeline can stay there). Arguments
arrive validated by ``boxes.py``.

Floating constants are passed to the kernels as scalars of the boxes' dtype: Numba types
a float literal as float64, which would silently compute float32 boxes in double and
make NMS decisions differ from the reference's.

NMS is the bitmask scheme of the Faster R-CNN CUDA code and torchvision: boxes sorted by
score are cut into tiles of 64; block (row tile, column tile) has one thread per row box,
which writes a 64-bit word saying which boxes of the column tile it suppresses. A single
block then walks the boxes in order and ORs the words of every kept box into a
"removed" bitmap. Everything stays on the device except the sort: ``boxes.py`` sorts
the scores on the host with the reference's stable order (copying them there if need
be) and passes that order, because Numba CUDA has no device sort. The result stays on
the device when the boxes (or the categories) are there.

No product is fused with an add (docs/architecture.md, Backends and dispatch): NVVM
contracts ``a * b + c`` into one fused multiply-add by default, which rounds once where
the reference rounds twice, and an IoU within an ulp of the NMS threshold (or a decoded
corner compared with a minimum size) can then land on the other side. Every float
product in these kernels is ``mul``, a multiplication rounded on its own that the
compiler may not fuse (``cuda_rounding.rounded_product``), so the kernels compute the reference's
bits (up to ``exp``, whose last bit CUDA's libdevice and NumPy may round differently).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, int64, uint64

from . import is_device_array, to_device, to_host
from .cuda_rounding import rounded_product

_TILE = 64  # bits in a mask word: boxes per NMS tile
_THREADS_2D = (16, 16)
_THREADS_1D = 128


def _result(d_out, on_device):
    return d_out if on_device else to_host(d_out)


def _make_kernels(dtype):
    """The box kernels for one float dtype, with ``mul`` for every float product."""
    mul = rounded_product(dtype)

    @cuda.jit
    def iou(boxes1, boxes2, zero, out):
        # x indexes columns, so neighbouring threads write neighbouring outputs (coalesced).
        j, i = cuda.grid(2)
        if i >= out.shape[0] or j >= out.shape[1]:
            return
        ax1, ay1, ax2, ay2 = boxes1[i, 0], boxes1[i, 1], boxes1[i, 2], boxes1[i, 3]
        bx1, by1, bx2, by2 = boxes2[j, 0], boxes2[j, 1], boxes2[j, 2], boxes2[j, 3]
        # boxes.box_iou's arithmetic in its order: (area_a + area_b) - inter.
        w = max(min(ax2, bx2) - max(ax1, bx1), zero)
        h = max(min(ay2, by2) - max(ay1, by1), zero)
        inter = mul(w, h)
        union = mul(ax2 - ax1, ay2 - ay1) + mul(bx2 - bx1, by2 - by1) - inter
        out[i, j] = inter / union if union > zero else zero

    @cuda.jit
    def nms_mask(boxes, labels, threshold, zero, mask):
        n = boxes.shape[0]
        col_tile = cuda.blockIdx.x
        row_tile = cuda.blockIdx.y
        if col_tile < row_tile:
            return  # every column box precedes every row box: nothing to suppress
        i = row_tile * _TILE + cuda.threadIdx.x
        if i >= n:
            return
        x1, y1, x2, y2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        area_i = mul(x2 - x1, y2 - y1)
        # All threads of the block read the same column box at once: one broadcast load
        # from the L1 cache, so staging the tile in shared memory would gain little.
        start = col_tile * _TILE
        bits = uint64(0)
        for t in range(_TILE):
            j = start + t
            if j >= n:
                break
            if j <= i or labels[j] != labels[i]:
                continue
            # The IoU kernel's arithmetic (a device function would keep the kernel from
            # compiling to PTX without a GPU: Numba asks the driver for its capability).
            w = max(min(x2, boxes[j, 2]) - max(x1, boxes[j, 0]), zero)
            h = max(min(y2, boxes[j, 3]) - max(y1, boxes[j, 1]), zero)
            inter = mul(w, h)
            union = area_i + mul(boxes[j, 2] - boxes[j, 0], boxes[j, 3] - boxes[j, 1]) - inter
            overlap = inter / union if union > zero else zero
            if overlap > threshold:  # float64 threshold, as the reference's
                bits |= uint64(1) << uint64(t)
        mask[i, col_tile] = bits

    @cuda.jit
    def decode(deltas, anchors, wx, wy, ww, wh, clip, half, out):
        # One thread per decoded box (anchor n, class c); boxes.box_decode's arithmetic.
        k = cuda.grid(1)
        per_anchor = deltas.shape[1] // 4
        if k >= deltas.shape[0] * per_anchor:
            return
        n = k // per_anchor
        c = (k % per_anchor) * 4
        aw = anchors[n, 2] - anchors[n, 0]
        ah = anchors[n, 3] - anchors[n, 1]
        ax = anchors[n, 0] + mul(half, aw)
        ay = anchors[n, 1] + mul(half, ah)
        cx = mul(deltas[n, c] / wx, aw) + ax
        cy = mul(deltas[n, c + 1] / wy, ah) + ay
        half_w = mul(half, mul(math.exp(min(deltas[n, c + 2] / ww, clip)), aw))
        half_h = mul(half, mul(math.exp(min(deltas[n, c + 3] / wh, clip)), ah))
        out[n, c] = cx - half_w
        out[n, c + 1] = cy - half_h
        out[n, c + 2] = cx + half_w
        out[n, c + 3] = cy + half_h

    return {"iou": iou, "nms_mask": nms_mask, "decode": decode}


# dtype -> {"iou", "nms_mask", "decode"}; cuda.jit compiles on first launch.
KERNELS = {np.dtype(t): _make_kernels(t) for t in (np.float32, np.float64)}


# --- box_iou ------------------------------------------------------------------------


def box_iou(boxes1, boxes2):
    """IoU of every pair, (N, 4) x (M, 4) -> (N, M); see ``boxes.box_iou``."""
    on_device = is_device_array(boxes1) or is_device_array(boxes2)
    n, m = boxes1.shape[0], boxes2.shape[0]
    dtype = np.dtype(boxes1.dtype)
    d_out = cuda.device_array((n, m), dtype=dtype)
    if n and m:
        blocks = (math.ceil(m / _THREADS_2D[0]), math.ceil(n / _THREADS_2D[1]))
        KERNELS[dtype]["iou"][blocks, _THREADS_2D](
            to_device(boxes1), to_device(boxes2), dtype.type(0), d_out
        )
    return _result(d_out, on_device)


# --- nms, batched_nms ---------------------------------------------------------------


@cuda.jit
def _gather_sorted(boxes, labels, order, use_labels, sorted_boxes, sorted_labels):
    k = cuda.grid(1)
    if k < order.shape[0]:
        src = order[k]
        for c in range(4):
            sorted_boxes[k, c] = boxes[src, c]
        sorted_labels[k] = labels[src] if use_labels else 0


@cuda.jit
def _nms_reduce_kernel(mask, order, removed, keep, count):
    # One block walks the sorted boxes in order; its threads share the OR of each kept
    # box's row of words. Every thread reaches the same decision, so the barriers are safe.
    n = mask.shape[0]
    col_tiles = mask.shape[1]
    tid = cuda.threadIdx.x
    for c in range(tid, col_tiles, cuda.blockDim.x):
        removed[c] = uint64(0)  # zeroed here rather than copied from the host
    cuda.syncthreads()
    n_kept = int64(0)
    for i in range(n):
        word = removed[i // _TILE]
        cuda.syncthreads()  # all reads of this word happen before anyone ORs into it
        if not (word >> uint64(i % _TILE)) & uint64(1):
            if tid == 0:
                keep[n_kept] = order[i]
            n_kept += 1
            for c in range(i // _TILE + tid, col_tiles, cuda.blockDim.x):
                removed[c] |= mask[i, c]
        cuda.syncthreads()
    if tid == 0:
        count[0] = n_kept


def _nms(boxes, order, idxs, iou_threshold):
    on_device = is_device_array(boxes) or is_device_array(idxs)
    n = boxes.shape[0]
    if n == 0:
        return cuda.device_array(0, np.int64) if on_device else np.zeros(0, np.int64)
    dtype = np.dtype(boxes.dtype)
    d_order = to_device(order)
    use_labels = idxs is not None
    d_labels = to_device(idxs) if use_labels else d_order  # unread without labels
    d_sorted = cuda.device_array((n, 4), dtype=dtype)
    d_sorted_labels = cuda.device_array(n, dtype=np.int64)
    _gather_sorted[math.ceil(n / _THREADS_1D), _THREADS_1D](
        to_device(boxes), d_labels, d_order, use_labels, d_sorted, d_sorted_labels
    )
    tiles = math.ceil(n / _TILE)
    d_mask = cuda.device_array((n, tiles), dtype=np.uint64)
    KERNELS[dtype]["nms_mask"][(tiles, tiles), _TILE](
        d_sorted, d_sorted_labels, np.float64(iou_threshold), dtype.type(0), d_mask
    )
    d_removed = cuda.device_array(tiles, dtype=np.uint64)
    d_keep = cuda.device_array(n, dtype=np.int64)
    d_count = cuda.device_array(1, dtype=np.int64)
    # One thread per word of a mask row (at most a tile's worth): no idle threads wait at
    # the two barriers per box.
    _nms_reduce_kernel[1, min(tiles, _TILE)](d_mask, d_order, d_removed, d_keep, d_count)
    n_kept = int(to_host(d_count)[0])
    return d_keep[:n_kept] if on_device else to_host(d_keep[:n_kept])


def nms(boxes, order, iou_threshold):
    """Greedy NMS of (N, 4) boxes visited in ``order`` (``boxes.score_order``);
    -> (K,) int64 indices by decreasing score; see ``boxes.nms``."""
    return _nms(boxes, order, None, iou_threshold)


def batched_nms(boxes, order, idxs, iou_threshold):
    """NMS within each ``idxs`` category; -> (K,) int64 by decreasing score."""
    return _nms(boxes, order, idxs, iou_threshold)


# --- box_decode ---------------------------------------------------------------------


def box_decode(deltas, anchors, weights, bbox_xform_clip):
    """Decode (N, 4 k) deltas against (N, 4) anchors; see ``boxes.box_decode``."""
    on_device = is_device_array(deltas) or is_device_array(anchors)
    dtype = np.dtype(deltas.dtype)
    d_out = cuda.device_array(tuple(deltas.shape), dtype=dtype)
    total = deltas.shape[0] * (deltas.shape[1] // 4)
    if total:
        wx, wy, ww, wh = (dtype.type(w) for w in weights)
        KERNELS[dtype]["decode"][math.ceil(total / _THREADS_1D), _THREADS_1D](
            to_device(deltas),
            to_device(anchors),
            wx,
            wy,
            ww,
            wh,
            dtype.type(bbox_xform_clip),
            dtype.type(0.5),
            d_out,
        )
    return _result(d_out, on_device)
