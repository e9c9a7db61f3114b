"""Numba CUDA kernels for roi_ops/: RoIAlign and RoIPool, forward and backward.

One thread per output element (k, c, ph, pw), ordered with pw fastest so that
neighbouring threads read neighbouring columns of the feature map. The backward
passes scatter with ``cuda.atomic.add``: many bins of many RoIs share feature cells.

Host wrappers take NumPy arrays (copied in and out) or device arrays (the result then
stays on the device when the features, or the forward's gradient, are there). The
per-RoI geometry arrives from ``roi_ops`` on the host, computed by the reference's own
helpers, so every backend places its samples from the same numbers; coordinates are
float64 for that reason, and the kernels place them with the reference's arithmetic:
the product ``ph * bin_h`` is ``_mul``, never fused with the add after it, since a
fused multiply-add could move a sample across a cell border (``cuda_rounding``). The
bilinear sums of the forward may be contracted: they are values, compared with the
reference to rounding, not decisions.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import is_device_array, to_device, to_host
from .bilinear import bilinear
from .cuda_rounding import rounded_product

_bilinear = cuda.jit(device=True)(bilinear)
_mul = rounded_product(np.float64)
_THREADS = 256


@cuda.jit(device=True)
def _output_element(i, shape):
    """The element (k, c, ph, pw) of a (K, C, ph, pw) array that thread i owns, pw fastest."""
    k_n, c_n, ph_n, pw_n = shape
    pw = i % pw_n
    ph = (i // pw_n) % ph_n
    c = (i // (pw_n * ph_n)) % c_n
    k = i // (pw_n * ph_n * c_n)
    return k, c, ph, pw


@cuda.jit
def _roi_align_forward(features, batch, sx, sy, bw, bh, grid_h, grid_w, use_max, out):
    i = cuda.grid(1)
    if i >= out.size:
        return
    k, c, ph, pw = _output_element(i, out.shape)
    height, width = features.shape[2], features.shape[3]
    b = batch[k]
    gh, gw = grid_h[k], grid_w[k]
    acc = 0.0
    best = -math.inf
    for iy in range(gh):
        y = sy[k] + _mul(ph, bh[k]) + (iy + 0.5) * bh[k] / gh
        for ix in range(gw):
            x = sx[k] + _mul(pw, bw[k]) + (ix + 0.5) * bw[k] / gw
            y0, y1, x0, x1, w0, w1, w2, w3 = _bilinear(y, x, height, width)
            v = (
                w0 * features[b, c, y0, x0]
                + w1 * features[b, c, y0, x1]
                + w2 * features[b, c, y1, x0]
                + w3 * features[b, c, y1, x1]
            )
            acc += v
            best = max(best, v)
    if gh * gw <= 0:
        out[k, c, ph, pw] = 0.0
    elif use_max:
        out[k, c, ph, pw] = best
    else:
        out[k, c, ph, pw] = acc / (gh * gw)


@cuda.jit
def _roi_align_backward(grad_out, batch, sx, sy, bw, bh, grid_h, grid_w, grad):
    i = cuda.grid(1)
    if i >= grad_out.size:
        return
    k, c, ph, pw = _output_element(i, grad_out.shape)
    height, width = grad.shape[2], grad.shape[3]
    b = batch[k]
    gh, gw = grid_h[k], grid_w[k]
    if gh * gw <= 0:
        return
    g = grad_out[k, c, ph, pw] / (gh * gw)
    for iy in range(gh):
        y = sy[k] + _mul(ph, bh[k]) + (iy + 0.5) * bh[k] / gh
        for ix in range(gw):
            x = sx[k] + _mul(pw, bw[k]) + (ix + 0.5) * bw[k] / gw
            y0, y1, x0, x1, w0, w1, w2, w3 = _bilinear(y, x, height, width)
            # Zero weights (a sample outside the map) add nothing; skip the atomics.
            if w0 != 0.0:
                cuda.atomic.add(grad, (b, c, y0, x0), g * w0)
            if w1 != 0.0:
                cuda.atomic.add(grad, (b, c, y0, x1), g * w1)
            if w2 != 0.0:
                cuda.atomic.add(grad, (b, c, y1, x0), g * w2)
            if w3 != 0.0:
                cuda.atomic.add(grad, (b, c, y1, x1), g * w3)


@cuda.jit
def _roi_pool_forward(features, batch, h_start, h_end, w_start, w_end, out, argmax):
    i = cuda.grid(1)
    if i >= out.size:
        return
    k, c, ph, pw = _output_element(i, out.shape)
    b = batch[k]
    width = features.shape[3]
    best = 0.0
    where = -1
    for y in range(h_start[k, ph], h_end[k, ph]):
        for x in range(w_start[k, pw], w_end[k, pw]):
            if where < 0 or features[b, c, y, x] > best:
                best = features[b, c, y, x]
                where = y * width + x
    out[k, c, ph, pw] = best
    argmax[k, c, ph, pw] = where


@cuda.jit
def _roi_pool_backward(grad_out, argmax, batch, grad):
    i = cuda.grid(1)
    if i >= grad_out.size:
        return
    k, c, ph, pw = _output_element(i, grad_out.shape)
    where = argmax[k, c, ph, pw]
    if where >= 0:
        width = grad.shape[3]
        cuda.atomic.add(grad, (batch[k], c, where // width, where % width), grad_out[k, c, ph, pw])


@cuda.jit
def _place_rows(values, rows, out):
    # out[rows[r], e] = values[r, e], one thread per element of values (K, E)
    i = cuda.grid(1)
    width = values.shape[1]
    if i < values.shape[0] * width:
        r = i // width
        out[rows[r], i - r * width] = values[r, i - r * width]


def _blocks(n):
    return max(1, (n + _THREADS - 1) // _THREADS)


def _finish(result, on_device):
    return result if on_device else to_host(result)


def roi_align(features, geometry, output_size, reduction):
    """RoIAlign of (N, C, H, W) features; ``geometry`` is ``roi_ops.roi_align_geometry``'s
    seven (K,) host arrays. Returns (K, C, ph, pw) in the features' dtype."""
    on_device = is_device_array(features)
    n, c, h, w = features.shape
    out = cuda.device_array((len(geometry[0]), c, *output_size), features.dtype)
    if out.size == 0:
        return _finish(out, on_device)
    if h == 0 or w == 0:
        return _finish(to_device(np.zeros(out.shape, features.dtype)), on_device)
    _roi_align_forward[_blocks(out.size), _THREADS](
        to_device(features), *[to_device(a) for a in geometry], reduction == "max", out
    )
    return _finish(out, on_device)


def roi_align_backward(grad_out, geometry, features_shape):
    """Gradient of average RoIAlign: (K, C, ph, pw) -> (N, C, H, W) in grad_out's dtype."""
    on_device = is_device_array(grad_out)
    grad = to_device(np.zeros(features_shape, grad_out.dtype))
    if grad_out.size == 0 or grad.size == 0:
        return _finish(grad, on_device)
    _roi_align_backward[_blocks(grad_out.size), _THREADS](
        to_device(grad_out), *[to_device(a) for a in geometry], grad
    )
    return _finish(grad, on_device)


def roi_pool(features, batch, h_start, h_end, w_start, w_end):
    """RoIPool over the bins of ``roi_ops.roi_pool_bins``; returns (out, argmax)."""
    on_device = is_device_array(features)
    c = features.shape[1]
    out = cuda.device_array((len(batch), c, h_start.shape[1], w_start.shape[1]), features.dtype)
    argmax = cuda.device_array(out.shape, np.int64)
    if out.size == 0:
        return _finish(out, on_device), _finish(argmax, on_device)
    _roi_pool_forward[_blocks(out.size), _THREADS](
        to_device(features),
        *[to_device(a) for a in (batch, h_start, h_end, w_start, w_end)],
        out,
        argmax,
    )
    return _finish(out, on_device), _finish(argmax, on_device)


def roi_pool_backward(grad_out, argmax, batch, features_shape):
    """Gradient of RoIPool: each output's gradient to the cell that won its max."""
    on_device = is_device_array(grad_out)
    grad = to_device(np.zeros(features_shape, grad_out.dtype))
    if grad_out.size == 0 or grad.size == 0:
        return _finish(grad, on_device)
    _roi_pool_backward[_blocks(grad_out.size), _THREADS](
        to_device(grad_out), to_device(argmax, np.int64), to_device(batch), grad
    )
    return _finish(grad, on_device)


def place_rows(out, rows, values, n_rows):
    """``roi_ops.pyramid``'s out[rows] = values for a device ``values`` (k, ...); None for
    a host one. out: the (n_rows, ...) device array of the earlier levels, or None to
    make it (uninitialised: the levels' rows partition it). Returns out."""
    if not is_device_array(values):
        return None
    if out is None:
        out = cuda.device_array((n_rows, *values.shape[1:]), dtype=values.dtype)
    k, width = values.shape[0], math.prod(values.shape[1:])
    if k and width:
        d_rows = to_device(np.asarray(rows, dtype=np.int64))
        _place_rows[_blocks(k * width), _THREADS](
            values.reshape(k, width), d_rows, out.reshape(n_rows, width)
        )
    return out
