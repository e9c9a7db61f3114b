"""Numba CUDA kernels for roi_ops.py: RoIAlign and RoIPool, forward and backward.

One thread per output element (k, c, ph, pw), ordered with pw fastest so that
neighbouring threads read neighbouring columns of the feature map. The backward
passes scatter with ``cuda.atomic.add``: many bins of many RoIs share feature cells.

Host wrappers take NumPy arrays (copied in and out) or device arrays (the result then
stays on the device). The per-RoI geometry is computed on the host by the reference's
own helpers from a (K, 5) copy of the RoIs, so every backend places its samples from the
same numbers; coordinates are float64 for that reason.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .. import kernels
from ..roi_ops import _check_rois, roi_align_geometry, roi_pool_bins
from .numba_roi_ops import bilinear

_bilinear = cuda.jit(device=True)(bilinear)
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
        y = sy[k] + ph * bh[k] + (iy + 0.5) * bh[k] / gh
        for ix in range(gw):
            x = sx[k] + pw * bw[k] + (ix + 0.5) * bw[k] / gw
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
        y = sy[k] + ph * bh[k] + (iy + 0.5) * bh[k] / gh
        for ix in range(gw):
            x = sx[k] + pw * bw[k] + (ix + 0.5) * bw[k] / gw
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


def _to_device(array):
    return array if kernels.is_device_array(array) else cuda.to_device(np.ascontiguousarray(array))


def _host_rois(rois, num_images):
    if kernels.is_device_array(rois):
        rois = rois.copy_to_host()
    return _check_rois(rois, num_images)


def _blocks(n):
    return max(1, (n + _THREADS - 1) // _THREADS)


def _finish(result, on_device):
    return result if on_device else result.copy_to_host()


def roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned, reduction):
    on_device = kernels.is_device_array(features)
    n, c, h, w = features.shape
    rois = _host_rois(rois, n)
    out = cuda.device_array((len(rois), c, *output_size), features.dtype)
    if out.size == 0:
        return _finish(out, on_device)
    if h == 0 or w == 0:
        out = cuda.to_device(np.zeros(out.shape, features.dtype))
        return _finish(out, on_device)
    geometry = [
        cuda.to_device(a)
        for a in roi_align_geometry(rois, output_size, spatial_scale, sampling_ratio, aligned)
    ]
    _roi_align_forward[_blocks(out.size), _THREADS](
        _to_device(features), *geometry, reduction == "max", out
    )
    return _finish(out, on_device)


def roi_align_backward(grad_out, rois, features_shape, spatial_scale, sampling_ratio, aligned):
    on_device = kernels.is_device_array(grad_out)
    rois = _host_rois(rois, features_shape[0])
    grad = cuda.to_device(np.zeros(features_shape, grad_out.dtype))
    if grad_out.size == 0 or grad.size == 0:
        return _finish(grad, on_device)
    geometry = [
        cuda.to_device(a)
        for a in roi_align_geometry(
            rois, tuple(grad_out.shape[2:]), spatial_scale, sampling_ratio, aligned
        )
    ]
    _roi_align_backward[_blocks(grad_out.size), _THREADS](_to_device(grad_out), *geometry, grad)
    return _finish(grad, on_device)


def roi_pool(features, rois, output_size, spatial_scale):
    on_device = kernels.is_device_array(features)
    n, c, h, w = features.shape
    rois = _host_rois(rois, n)
    out = cuda.device_array((len(rois), c, *output_size), features.dtype)
    argmax = cuda.device_array(out.shape, np.int64)
    if out.size == 0:
        return _finish(out, on_device), _finish(argmax, on_device)
    bins = roi_pool_bins(rois, output_size, spatial_scale, h, w, np.dtype(features.dtype).type)
    batch = rois[:, 0].astype(np.int64)
    _roi_pool_forward[_blocks(out.size), _THREADS](
        _to_device(features),
        cuda.to_device(batch),
        *[cuda.to_device(b) for b in bins],
        out,
        argmax,
    )
    return _finish(out, on_device), _finish(argmax, on_device)


def roi_pool_backward(grad_out, argmax, rois, features_shape):
    on_device = kernels.is_device_array(grad_out)
    rois = _host_rois(rois, features_shape[0])
    grad = cuda.to_device(np.zeros(features_shape, grad_out.dtype))
    if grad_out.size == 0 or grad.size == 0:
        return _finish(grad, on_device)
    argmax = argmax if kernels.is_device_array(argmax) else np.asarray(argmax, np.int64)
    _roi_pool_backward[_blocks(grad_out.size), _THREADS](
        _to_device(grad_out),
        _to_device(argmax),
        cuda.to_device(rois[:, 0].astype(np.int64)),
        grad,
    )
    return _finish(grad, on_device)
