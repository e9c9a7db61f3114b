"""Numba CPU kernels for roi_ops/: RoIAlign and RoIPool, forward and backward.

Same results as the NumPy reference in ``tinymaskrcnn/roi_ops/``, which validates the
inputs and computes the per-RoI geometry (``roi_align_geometry``, ``roi_pool_bins``)
that these kernels take, so that every backend places its samples and bins from the
very same numbers.

Forward work is split over (RoI, block of channels): the sample positions and bilinear
weights of a RoI are computed once per block and reused for each of its channels. When
the RoIs read the map many times over (the heads' many RoIs on a small map), the map is
first copied channels-last, so that each sample reads its four cells' channels as four
contiguous rows that the compiler vectorises, instead of one value per channel plane.
Backward first tabulates, per RoI (in parallel), the distinct cells each bin reads and
their summed weights, then scatters over blocks of channels, so that no two threads
ever add into the same gradient cell (no atomics needed on the CPU) and every cell
receives its additions in one fixed order (bit-identical results run to run).

Flat cell indices are uint32: Numba checks every signed index for Python's negative
wrap-around, and on these gather-bound loops that check costs about a third of the time
(a feature map has far fewer than 2**32 cells). Sample coordinates are float64 in every
backend, so that all of them pick the same cells; weights are stored in the data's dtype.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import numba_threads
from .bilinear import bilinear
from .numba_threads import threads_for

_bilinear = njit(inline="always")(bilinear)


@njit(cache=True)
def _fill_samples(sx, sy, bw, bh, gh, gw, ph_n, pw_n, height, width, index, weight):
    """Neighbours (flat index y * W + x) and weights of every sample of one RoI, bin-major."""
    s = 0
    for ph in range(ph_n):
        for pw in range(pw_n):
            for iy in range(gh):
                y = sy + ph * bh + (iy + 0.5) * bh / gh
                for ix in range(gw):
                    x = sx + pw * bw + (ix + 0.5) * bw / gw
                    y0, y1, x0, x1, w0, w1, w2, w3 = _bilinear(y, x, height, width)
                    index[s, 0] = y0 * width + x0
                    index[s, 1] = y0 * width + x1
                    index[s, 2] = y1 * width + x0
                    index[s, 3] = y1 * width + x1
                    weight[s, 0] = w0
                    weight[s, 1] = w1
                    weight[s, 2] = w2
                    weight[s, 3] = w3
                    s += 1


@njit(inline="always")
def _roi_samples(k, sx, sy, bw, bh, grid_h, grid_w, ph_n, pw_n, height, width, dtype):
    """RoI k's sample tables (``_fill_samples``): index (S, 4) uint32 and weight (S, 4) of
    ``dtype``, S = ph_n * pw_n * samples per bin, and the samples per bin."""
    gh, gw = grid_h[k], grid_w[k]
    index = np.empty((ph_n * pw_n * gh * gw, 4), np.uint32)
    weight = np.empty((ph_n * pw_n * gh * gw, 4), dtype)
    _fill_samples(sx[k], sy[k], bw[k], bh[k], gh, gw, ph_n, pw_n, height, width, index, weight)
    return index, weight, gh * gw


@njit(inline="always")
def _sample(values, index, weight, s):
    return (
        weight[s, 0] * values[index[s, 0]]
        + weight[s, 1] * values[index[s, 1]]
        + weight[s, 2] * values[index[s, 2]]
        + weight[s, 3] * values[index[s, 3]]
    )


@njit(inline="always")
def _bin_sums_of_4_channels(v0, v1, v2, v3, index, weight, s, per_bin):
    # Four channels at once: each sample's cells and weights are loaded once for all
    # four, and the four independent reads keep more memory requests in flight.
    a0 = a1 = a2 = a3 = 0.0
    for t in range(s, s + per_bin):
        i0, i1, i2, i3 = index[t, 0], index[t, 1], index[t, 2], index[t, 3]
        w0, w1, w2, w3 = weight[t, 0], weight[t, 1], weight[t, 2], weight[t, 3]
        a0 += w0 * v0[i0] + w1 * v0[i1] + w2 * v0[i2] + w3 * v0[i3]
        a1 += w0 * v1[i0] + w1 * v1[i1] + w2 * v1[i2] + w3 * v1[i3]
        a2 += w0 * v2[i0] + w1 * v2[i1] + w2 * v2[i2] + w3 * v2[i3]
        a3 += w0 * v3[i0] + w1 * v3[i1] + w2 * v3[i2] + w3 * v3[i3]
    return a0, a1, a2, a3


@njit(parallel=True, cache=True)
def _roi_align_forward(
    features, batch, sx, sy, bw, bh, grid_h, grid_w, order, use_max, cblock, out
):
    k_n, c_n, ph_n, pw_n = out.shape
    height, width = features.shape[2], features.shape[3]
    plane = features.reshape(features.shape[0], c_n, height * width)
    n_blocks = (c_n + cblock - 1) // cblock
    for task in prange(k_n * n_blocks):
        k = order[task // n_blocks]
        c0 = (task % n_blocks) * cblock
        c1 = min(c0 + cblock, c_n)
        index, weight, per_bin = _roi_samples(
            k, sx, sy, bw, bh, grid_h, grid_w, ph_n, pw_n, height, width, features.dtype
        )
        count = max(per_bin, 1)
        b = batch[k]
        c = c0
        while not use_max and c + 4 <= c1:
            v0, v1, v2, v3 = plane[b, c], plane[b, c + 1], plane[b, c + 2], plane[b, c + 3]
            for ph in range(ph_n):
                for pw in range(pw_n):
                    s = (ph * pw_n + pw) * per_bin
                    a0, a1, a2, a3 = _bin_sums_of_4_channels(
                        v0, v1, v2, v3, index, weight, s, per_bin
                    )
                    out[k, c, ph, pw] = a0 / count
                    out[k, c + 1, ph, pw] = a1 / count
                    out[k, c + 2, ph, pw] = a2 / count
                    out[k, c + 3, ph, pw] = a3 / count
            c += 4
        rest = c
        for c in range(rest, c1):
            values = plane[b, c]
            s = 0
            for ph in range(ph_n):
                for pw in range(pw_n):
                    if use_max:
                        best = -np.inf if per_bin > 0 else 0.0
                        for _ in range(per_bin):
                            best = max(best, _sample(values, index, weight, s))
                            s += 1
                        out[k, c, ph, pw] = best
                    else:
                        acc = 0.0
                        for _ in range(per_bin):
                            acc += _sample(values, index, weight, s)
                            s += 1
                        out[k, c, ph, pw] = acc / count


@njit(parallel=True, cache=True)
def _to_channels_last(planes, cells, channels, size):
    """cells (N * H * W * C,) = planes (N * C * H * W,) transposed to channels-last.

    In tiles of 64 cells x 16 channels, each tile reads 16 rows of 64 consecutive cells
    and its writes 64 rows of 16 consecutive channels, so both sides stay in cache; NumPy's
    transposed copy walks one side with a stride of H * W (twice as long on a 256-channel
    200 x 200 map)."""
    n = planes.size // (channels * size)
    c = np.uint64(channels)
    hw = np.uint64(size)
    tiles = (size + 63) // 64
    for task in prange(n * tiles):
        b = np.uint64(task // tiles)
        p0 = np.uint64((task % tiles) * 64)
        p1 = min(p0 + np.uint64(64), hw)
        for c0 in range(np.uint64(0), c, np.uint64(16)):
            c1 = min(c0 + np.uint64(16), c)
            for p in range(p0, p1):
                row = (b * hw + p) * c
                for ch in range(c0, c1):
                    cells[row + ch] = planes[(b * c + ch) * hw + p]


@njit(parallel=True, cache=True)
def _roi_align_forward_channels_last(
    cells, height, width, batch, sx, sy, bw, bh, grid_h, grid_w, order, use_max, out
):
    """``_roi_align_forward`` on a channels-last map: cells (N, H * W * C), cell i's
    channels at [i * C, (i + 1) * C). Each channel's sums run in the same order, in the
    same precision, as there, so the two give the same bits."""
    k_n, c_n, ph_n, pw_n = out.shape
    for task in prange(k_n):
        k = order[task]
        index, weight, per_bin = _roi_samples(
            k, sx, sy, bw, bh, grid_h, grid_w, ph_n, pw_n, height, width, cells.dtype
        )
        count = max(per_bin, 1)
        image = cells[batch[k]]
        acc = np.empty(c_n, np.float64)
        s = 0
        for ph in range(ph_n):
            for pw in range(pw_n):
                start = -np.inf if use_max and per_bin > 0 else 0.0
                for c in range(c_n):
                    acc[c] = start
                for _ in range(per_bin):
                    w0, w1, w2, w3 = weight[s, 0], weight[s, 1], weight[s, 2], weight[s, 3]
                    # Unsigned offsets: no wrap-around checks in the channel loops.
                    r0 = np.uint64(index[s, 0]) * c_n
                    r1 = np.uint64(index[s, 1]) * c_n
                    r2 = np.uint64(index[s, 2]) * c_n
                    r3 = np.uint64(index[s, 3]) * c_n
                    if use_max:
                        for c in range(c_n):
                            value = (
                                w0 * image[r0 + c]
                                + w1 * image[r1 + c]
                                + w2 * image[r2 + c]
                                + w3 * image[r3 + c]
                            )
                            acc[c] = max(acc[c], value)
                    else:
                        for c in range(c_n):
                            acc[c] += (
                                w0 * image[r0 + c]
                                + w1 * image[r1 + c]
                                + w2 * image[r2 + c]
                                + w3 * image[r3 + c]
                            )
                    s += 1
                for c in range(c_n):
                    out[k, c, ph, pw] = acc[c] if use_max else acc[c] / count


@njit(parallel=True, cache=True)
def _merged_cells(rois, sx, sy, bw, bh, grid_h, grid_w, ph_n, pw_n, height, width, start,
                  cell, share, bin_end):  # fmt: skip
    """For each RoI of ``rois`` and each bin: the cells its samples read and what share
    of the bin's gradient each cell gets (the sum of its bilinear weights over the
    bin's samples, divided by the samples per bin).

    A cell read by several samples of a bin (neighbouring samples share corners when
    bins are smaller than two cells, as for most RoIs of a small map) appears once, and
    cells of weight 0 not at all, so the backward scatters each gradient to fewer cells.
    RoI ``rois[i]`` writes its entries from ``start[i]``; bin b's entries end at
    ``bin_end[i, b]`` and begin where bin b - 1's end (bin 0 at ``start[i]``).
    """
    for i in prange(rois.shape[0]):
        k = rois[i]
        index, weight, per_bin = _roi_samples(
            k, sx, sy, bw, bh, grid_h, grid_w, ph_n, pw_n, height, width, np.float64
        )
        count = max(per_bin, 1)
        end = start[i]
        for b in range(ph_n * pw_n):
            first = end
            for s in range(b * per_bin, (b + 1) * per_bin):
                for j in range(4):
                    w = weight[s, j]
                    if w == 0.0:
                        continue
                    e = first
                    while e < end and cell[e] != index[s, j]:
                        e += 1
                    if e == end:
                        cell[e] = index[s, j]
                        share[e] = 0.0
                        end += 1
                    share[e] += w
            for e in range(first, end):
                share[e] /= count
            bin_end[i, b] = end


@njit(parallel=True, cache=True)
def _scatter_bins(grad_out, batch, rois, start, cell, share, bin_end, cblock, grad):
    """grad[batch[k], c, cell] += grad_out[k, c, bin] * share over every bin's cells.

    One block of channels per task: its gradient planes belong to this thread alone (no
    races, no atomics), and each plane receives its additions in the same order whatever
    the number of threads, so the result is bit-identical from run to run.
    """
    k_n, c_n, ph_n, pw_n = grad_out.shape
    plane = grad.reshape(grad.shape[0], c_n, grad.shape[2] * grad.shape[3])
    n_blocks = (c_n + cblock - 1) // cblock
    for block in prange(n_blocks):
        for i in range(rois.shape[0]):
            k = rois[i]
            b = batch[k]
            for c in range(block * cblock, min(block * cblock + cblock, c_n)):
                target = plane[b, c]
                # Unsigned entry numbers: no wrap-around checks on the table reads.
                first = np.uint64(start[i])
                for ph in range(ph_n):
                    for pw in range(pw_n):
                        g = grad_out[k, c, ph, pw]
                        end = np.uint64(bin_end[i, ph * pw_n + pw])
                        for e in range(first, end):
                            target[cell[e]] += g * share[e]
                        first = end


@njit(parallel=True, cache=True)
def _roi_pool_forward(features, batch, h_start, h_end, w_start, w_end, out, argmax):
    k_n, c_n, ph_n, pw_n = out.shape
    width = features.shape[3]
    plane = features.reshape(features.shape[0], c_n, features.shape[2] * width)
    for task in prange(k_n * c_n):
        k = task // c_n
        c = task % c_n
        values = plane[batch[k], c]
        for ph in range(ph_n):
            for pw in range(pw_n):
                y0, y1 = h_start[k, ph], h_end[k, ph]
                x0, x1 = w_start[k, pw], w_end[k, pw]
                if y1 <= y0 or x1 <= x0:
                    out[k, c, ph, pw] = 0.0
                    argmax[k, c, ph, pw] = -1
                    continue
                where = np.uint32(y0 * width + x0)
                best = values[where]
                for y in range(y0, y1):
                    row = np.uint32(y * width)
                    for x in range(np.uint32(x0), np.uint32(x1)):
                        # Strict '>': the first maximum in row-major order wins.
                        if values[row + x] > best:
                            best = values[row + x]
                            where = row + x
                out[k, c, ph, pw] = best
                argmax[k, c, ph, pw] = where


@njit(parallel=True, cache=True)
def _roi_pool_backward(grad_out, argmax, batch, grad):
    k_n, c_n, ph_n, pw_n = grad_out.shape
    plane = grad.reshape(grad.shape[0], c_n, grad.shape[2] * grad.shape[3])
    for c in prange(c_n):  # one channel per task: no two threads write the same cell
        for k in range(k_n):
            b = batch[k]
            for ph in range(ph_n):
                for pw in range(pw_n):
                    where = argmax[k, c, ph, pw]
                    if where >= 0:
                        plane[b, c, where] += grad_out[k, c, ph, pw]


def _raster_order(batch, start_x, start_y, bin_w, bin_h, output_size):
    """RoIs by image, then bands of their centre's y, then x: neighbours in this order overlap.

    Consecutive RoIs of one thread then read (or, backward, write) feature cells that
    the previous RoI left in cache; on a (1, 256, 200, 200) map this saves about 10%.
    The order changes only speed (and, backward, the order of float additions).
    """
    ph, pw = output_size
    centre_x = start_x + bin_w * (pw / 2)
    centre_y = start_y + bin_h * (ph / 2)
    band = np.floor(centre_y / max(np.ptp(centre_y) / 16, 1e-6)) if len(centre_y) else centre_y
    return np.lexsort((centre_x, band, batch))


def _channel_block(tasks_outside, channels, per_thread=4):
    """Channels per block, a multiple of 4, for about ``per_thread`` tasks per thread."""
    blocks = max(1, -(-per_thread * numba.get_num_threads() // max(tasks_outside, 1)))
    block = max(1, -(-channels // min(blocks, max(channels, 1))))
    return -(-block // 4) * 4


# Channels-last pays for its copy of the map (1.4 ns a cell and channel on two threads,
# against the 1-2 ns a sample-channel it saves) once the RoIs take this many samples per
# cell of the map. Measured by benchmarks/small_kernels.py (benchmarks/RESULTS.md, "An
# Intel AVX-512 VM ..."), plane by plane -> channels-last: the shapes box head's 100 RoIs
# on its 32 x 32 P2, 19 samples a cell, 1.4 -> 0.9 ms; the standard 1000 RoIs on
# (1, 256, 200, 200), 4.9 a cell, 84 -> 48 ms; 10 mask RoIs on a 200 x 200 map, 0.2 a
# cell, 3.1 -> 11 ms (there the copy is most of the time).
_CHANNELS_LAST_MIN_SAMPLES_PER_CELL = 2


def _channels_last(features):
    """(N, C, H, W) -> (N, H * W * C) channels-last, by the tiled kernel on large maps."""
    n, c, h, w = features.shape
    if features.size < numba_threads.PARALLEL_MIN_WORK:  # NumPy's copy is as fast there
        return np.ascontiguousarray(features.transpose(0, 2, 3, 1)).reshape(n, h * w * c)
    cells = np.empty(n * h * w * c, features.dtype)
    _to_channels_last(np.ascontiguousarray(features).reshape(-1), cells, c, h * w)
    return cells.reshape(n, h * w * c)


def roi_align(features, geometry, output_size, reduction):
    """RoIAlign of (N, C, H, W) features; ``geometry`` is ``roi_ops.roi_align_geometry``'s
    seven (K,) arrays. Returns (K, C, ph, pw) in the features' dtype."""
    n, c, h, w = features.shape
    batch, sx, sy, bw, bh, gh, gw = geometry
    out = np.zeros((len(batch), c, *output_size), features.dtype)
    if out.size == 0 or h == 0 or w == 0:
        return out
    order = _raster_order(batch, sx, sy, bw, bh, output_size)
    samples = int(np.sum(gh.astype(np.int64) * gw)) * output_size[0] * output_size[1]
    use_max = reduction == "max"
    with threads_for(samples * c):
        if samples >= _CHANNELS_LAST_MIN_SAMPLES_PER_CELL * n * h * w:
            cells = _channels_last(features)
            _roi_align_forward_channels_last(
                cells, h, w, batch, sx, sy, bw, bh, gh, gw, order, use_max, out
            )
        else:
            features = np.ascontiguousarray(features)
            cblock = _channel_block(len(batch), c)
            _roi_align_forward(features, batch, sx, sy, bw, bh, gh, gw, order, use_max, cblock, out)
    return out


# The cell tables of roi_align_backward are built for this many samples' entries at a
# time (4 per sample; 24 MiB of tables in float32), then scattered.
_BACKWARD_CHUNK_ENTRIES = 1 << 21


def roi_align_backward(grad_out, geometry, features_shape):
    """Gradient of average RoIAlign: (K, C, ph, pw) -> (N, C, H, W) in grad_out's dtype.

    Two parallel passes per chunk of RoIs: the cells and shares of every bin, once per
    RoI (``_merged_cells``, over RoIs), then the scatter of every channel's gradient
    through them (``_scatter_bins``, over blocks of channels).
    """
    n, c, h, w = features_shape
    grad = np.zeros(features_shape, grad_out.dtype)
    if grad_out.size == 0 or grad.size == 0:
        return grad
    batch, sx, sy, bw, bh, gh, gw = geometry
    ph_n, pw_n = grad_out.shape[2:]
    grad_out = np.ascontiguousarray(grad_out)
    order = _raster_order(batch, sx, sy, bw, bh, grad_out.shape[2:])
    entries = 4 * ph_n * pw_n * gh[order].astype(np.int64) * gw[order]
    cblock = _channel_block(1, c)
    with threads_for(int(entries.sum()) * c):
        lo = 0
        while lo < len(order):
            # At least one RoI a chunk, however many samples it has.
            total = np.cumsum(entries[lo:])
            hi = lo + max(1, int(np.searchsorted(total, _BACKWARD_CHUNK_ENTRIES, side="right")))
            rois = np.ascontiguousarray(order[lo:hi])
            start = np.concatenate([[0], total[: hi - lo - 1]]).astype(np.int64)
            size = int(total[hi - lo - 1])
            cell = np.empty(size, np.uint32)
            share = np.empty(size, grad.dtype)
            bin_end = np.empty((hi - lo, ph_n * pw_n), np.int64)
            _merged_cells(
                rois, sx, sy, bw, bh, gh, gw, ph_n, pw_n, h, w, start, cell, share, bin_end
            )
            _scatter_bins(grad_out, batch, rois, start, cell, share, bin_end, cblock, grad)
            lo = hi
    return grad


def roi_pool(features, batch, h_start, h_end, w_start, w_end):
    """RoIPool over the bins of ``roi_ops.roi_pool_bins``; returns (out, argmax)."""
    n, c, h, w = features.shape
    out = np.zeros((len(batch), c, h_start.shape[1], w_start.shape[1]), features.dtype)
    argmax = np.full(out.shape, -1, np.int64)
    if out.size == 0:
        return out, argmax
    with threads_for(out.size):
        _roi_pool_forward(
            np.ascontiguousarray(features), batch, h_start, h_end, w_start, w_end, out, argmax
        )
    return out, argmax


def roi_pool_backward(grad_out, argmax, batch, features_shape):
    """Gradient of RoIPool: each output's gradient to the cell that won its max."""
    grad = np.zeros(features_shape, grad_out.dtype)
    if grad_out.size == 0 or grad.size == 0:
        return grad
    argmax = np.ascontiguousarray(argmax, dtype=np.int64)
    with threads_for(grad_out.size):
        _roi_pool_backward(np.ascontiguousarray(grad_out), argmax, batch, grad)
    return grad
