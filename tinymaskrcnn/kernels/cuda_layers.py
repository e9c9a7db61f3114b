"""Numba CUDA kernels for the layers between convolutions (nn/layers.py, fpn.py).

They exist so that feature maps can stay on the GPU from one convolution to the next
(docs/architecture.md, Backends and dispatch): the folded conv's epilogue (bias,
shortcut, ReLU), the plain ReLU of the heads, max pooling (ResNet's stem, the FPN's P6)
and the FPN's top-down "upsample by nearest neighbour and add". Each is one thread per
output element, computing what the reference computes for that element in the same
order, so the results equal the reference's bit for bit.

Unlike the conv and RoI kernels, these run only on device arrays: for a host array
they return None and the stage runs its NumPy reference. Copying a map to the GPU for
one elementwise pass and back would cost more than the pass itself; a map is on the
device only when the model put the image there (``kernels.resident``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import is_device_array, to_device
from .cuda_rounding import rounded_product

_THREADS = 256


def _blocks(n):
    return max(1, math.ceil(n / _THREADS))


@cuda.jit(device=True)
def _nchw(i, c, h, w):
    # flat index i of a C-contiguous (N, C, H, W) array -> (image, channel, row, column)
    return i // (w * h * c), (i // (w * h)) % c, (i // w) % h, i % w


# --- bias + shortcut + ReLU, in place (the folded convolution's epilogue) ---------------


def _make_bias_add_relu(dtype):
    mul = rounded_product(dtype)

    @cuda.jit
    def bias_add_relu(y, scale, has_scale, bias, residual, has_residual, relu, zero):
        # y, residual (planes, size) with plane p = (image, channel p % C)
        i = cuda.grid(1)
        planes, size = y.shape
        if i >= planes * size:
            return
        p, q = i // size, i % size
        v = y[p, q]
        if has_scale:
            v = mul(v, scale[p % scale.shape[0]])  # rounded before the add, as the reference
        v += bias[p % bias.shape[0]]
        if has_residual:
            v += residual[p, q]
        if relu and v < zero:  # NaN stays NaN, as np.maximum(v, 0)
            v = zero
        y[p, q] = v

    return bias_add_relu


# One compilation per float dtype: ``mul`` is libdevice's function for that dtype.
_BIAS_ADD_RELU = {np.dtype(t): _make_bias_add_relu(t) for t in (np.float32, np.float64)}


def bias_add_relu_(y, bias, residual=None, relu=True, scale=None):
    """Same contract as ``tinymaskrcnn.nn.layers.bias_add_relu_``; None for a host ``y``."""
    if not is_device_array(y):
        return None
    n, c, h, w = y.shape
    dtype = np.dtype(y.dtype)
    flat = y.reshape(n * c, h * w)
    d_bias = to_device(bias, dtype).reshape(-1)
    d_scale = d_bias if scale is None else to_device(scale, dtype).reshape(-1)
    d_res = flat if residual is None else to_device(residual, dtype).reshape(n * c, h * w)
    kernel = _BIAS_ADD_RELU[dtype][_blocks(flat.size), _THREADS]
    kernel(
        flat, d_scale, scale is not None, d_bias, d_res, residual is not None, relu, dtype.type(0)
    )
    return y


# --- ReLU (a new array: the input may be needed elsewhere) -----------------------------


@cuda.jit
def _relu(x, y, zero):
    i = cuda.grid(1)
    if i < x.shape[0]:
        v = x[i]
        y[i] = zero if v < zero else v


def relu(x):
    """max(x, 0) elementwise as a new device array (nn.ReLU in inference); None for host x."""
    if not is_device_array(x):
        return None
    flat = x.reshape(x.size)
    y = cuda.device_array(x.size, dtype=x.dtype)
    _relu[_blocks(x.size), _THREADS](flat, y, np.dtype(x.dtype).type(0))
    return y.reshape(x.shape)


# --- max pooling ------------------------------------------------------------------------


@cuda.jit
def _max_pool(x, kh, kw, sh, sw, ph, pw, with_argmax, lowest, y, argmax):
    # y, argmax (N, C, Ho, Wo); x (N, C, H, W); padding never wins (it reads as -inf)
    i = cuda.grid(1)
    n, c, ho, wo = y.shape
    if i >= n * c * ho * wo:
        return
    img, ch, row, col = _nchw(i, c, ho, wo)
    h, w = x.shape[2], x.shape[3]
    best, winner = lowest, 0
    for a in range(kh):
        r = row * sh - ph + a
        for b in range(kw):
            q = col * sw - pw + b
            if 0 <= r < h and 0 <= q < w:
                v = x[img, ch, r, q]
                if v > best:  # strictly greater: the first maximum in scan order wins
                    best, winner = v, r * w + q
                elif v != v and not with_argmax:
                    # The reference's inference path (np.maximum) propagates a NaN, and
                    # nothing compares greater than one, so it sticks; with argmax a NaN
                    # never wins, as there (``window > best``).
                    best = v
    y[img, ch, row, col] = best
    if with_argmax:
        argmax[img, ch, row, col] = winner


def max_pool2d(x, kernel_size, stride, padding, out_hw, argmax):
    """Same contract as ``tinymaskrcnn.nn.layers.max_pool2d`` with checked pairs and the
    output size; None for a host ``x``."""
    if not is_device_array(x):
        return None
    n, c = x.shape[:2]
    ho, wo = out_hw
    dtype = np.dtype(x.dtype)
    y = cuda.device_array((n, c, ho, wo), dtype=dtype)
    winner = cuda.device_array((n, c, ho, wo) if argmax else (1, 1, 1, 1), dtype=np.int64)
    _max_pool[_blocks(y.size), _THREADS](
        x, *kernel_size, *stride, *padding, argmax, dtype.type(-np.inf), y, winner
    )
    return (y, winner) if argmax else y


# --- the FPN's top-down add: y += upsample_nearest(x, y's size), in place ---------------


@cuda.jit(device=True)
def _nearest(o, out_size, in_size, scale):
    # nn.layers.nearest_indices: floor(o * scale) in float32, clamped; identity if equal
    if out_size == in_size:
        return o
    return min(int(math.floor(np.float32(o) * scale)), in_size - 1)


@cuda.jit
def _add_upsampled(y, x, scale_h, scale_w):
    i = cuda.grid(1)
    n, d, h, w = y.shape
    if i >= n * d * h * w:
        return
    img, ch, row, col = _nchw(i, d, h, w)
    hx, wx = x.shape[2], x.shape[3]
    y[img, ch, row, col] += x[img, ch, _nearest(row, h, hx, scale_h), _nearest(col, w, wx, scale_w)]


def add_top_down(lateral, coarse):
    """Same contract as ``tinymaskrcnn.fpn.add_top_down``; None for a host ``lateral``."""
    if not is_device_array(lateral):
        return None
    d_coarse = to_device(coarse, lateral.dtype)
    (h, w), (hc, wc) = lateral.shape[2:], coarse.shape[2:]
    # The scale in float32 as nearest_indices (and torch) compute it.
    scale_h, scale_w = np.float32(hc) / np.float32(h), np.float32(wc) / np.float32(w)
    _add_upsampled[_blocks(lateral.size), _THREADS](lateral, d_coarse, scale_h, scale_w)
    return lateral
