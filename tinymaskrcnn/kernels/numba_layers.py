"""Numba CPU kernels for nn/layers.py: the fused inference epilogue, ReLU and max pooling.

``bias_add_relu_`` ends every convolution + fixed batch norm of the backbone's inference
path (the batch norm's scale and shift, the block's shortcut, ReLU). NumPy does that in
two to four single-threaded passes over the feature map; this does it in one pass, one
(image, channel) plane per parallel iteration. ``relu`` is nn.ReLU in inference (the RPN
and mask heads' ReLUs): ``np.maximum(x, 0)`` on all threads, with its exact results.
In training ``relu_with_mask`` writes the output and the mask backward needs in one
pass (the reference compares, then multiplies), and ``relu_backward`` multiplies by the
mask without NumPy's bool-to-float cast: the reference's bytes, 2-3x faster on the mask
head's (K, 64, 28, 28).
``max_pool2d`` is ResNet's stem pooling (and the FPN's P6): the reference builds the
padded map and passes over it once per window tap (nine times, with two ``np.where``
each for the argmax), this reads each window once, a plane per parallel iteration
(ResNet-50's stem at 800 x 1216: 58 -> 41 ms; with argmax, a shapes training batch:
5.4 -> 1.3 ms).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import numba_threads
from .numba_threads import threads_for

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# Below this many elements the training ReLU's NumPy passes beat a kernel call (about
# 20 us even on one thread): on a shapes training step, (4, 32, 16, 16) took 0.025 ms
# by the reference and 0.042 ms by the kernel; (4, 64, 32, 32) 0.21 and 0.15 ms.
RELU_MIN_WORK = 1 << 17


@njit(parallel=True, cache=True)
def _bias_add_relu(y, scale, has_scale, bias, residual, has_residual, relu, zero):
    # zero: 0 in y's dtype, so that v keeps that type (a literal 0 would make it float64,
    # and float32 products and sums would then round once instead of twice).
    planes, size = y.shape
    channels = bias.shape[0]
    for p in prange(planes):
        b = bias[p % channels]
        s = scale[p % channels] if has_scale else b
        for i in range(size):
            v = y[p, i]
            if has_scale:
                v = v * s  # rounded on its own, then the add: the reference's order
            v += b
            if has_residual:
                v += residual[p, i]
            if relu and v < zero:
                v = zero
            y[p, i] = v


def bias_add_relu_(y, bias, residual=None, relu=True, scale=None):
    """Same contract as ``tinymaskrcnn.nn.layers.bias_add_relu_`` (in place on y)."""
    n, c, h, w = y.shape
    if not y.flags.c_contiguous:  # never for a convolution's output; keep the contract
        y[...] = bias_add_relu_(np.ascontiguousarray(y), bias, residual, relu, scale)
        return y
    flat = y.reshape(n * c, h * w)
    b = np.ascontiguousarray(np.asarray(bias).reshape(-1), dtype=y.dtype)
    s = b if scale is None else np.ascontiguousarray(np.asarray(scale).reshape(-1), dtype=y.dtype)
    r = flat if residual is None else np.ascontiguousarray(residual, dtype=y.dtype)
    with threads_for(y.size):
        _bias_add_relu(flat, s, scale is not None, b, r.reshape(n * c, h * w),
                       residual is not None, relu, y.dtype.type(0))  # fmt: skip
    return y


@njit(parallel=True, cache=True)
def _relu_with_mask(x, y, mask):
    for i in prange(x.size):
        v = x[i]
        keep = v > 0
        mask[i] = keep
        # x * (x > 0): v where v > 0, else v * 0 (-0.0 for negatives, NaN for NaN).
        y[i] = v if keep else v * 0


def relu_with_mask(x):
    """Same contract as ``tinymaskrcnn.nn.layers.ReLU.forward`` in training: new arrays
    (y = x * (x > 0), mask = x > 0), one pass instead of two. None for anything but a
    contiguous float32 or float64 array of at least RELU_MIN_WORK elements (the
    reference runs)."""
    if not isinstance(x, np.ndarray) or x.dtype not in _FLOATS or not x.flags.c_contiguous:
        return None
    if x.size < RELU_MIN_WORK:
        return None
    y, mask = np.empty_like(x), np.empty(x.shape, bool)
    with threads_for(x.size):
        _relu_with_mask(x.reshape(-1), y.reshape(-1), mask.reshape(-1))
    return y, mask


@njit(parallel=True, cache=True)
def _relu_backward(grad, mask, out):
    for i in prange(grad.size):
        g = grad[i]
        out[i] = g if mask[i] else g * 0  # grad * mask, signed zeros and NaN included


def relu_backward(grad_out, mask):
    """Same contract as ``tinymaskrcnn.nn.layers.ReLU.backward``: a new array
    grad_out * mask. None unless both are contiguous, of one shape, grad_out float32 or
    float64 and mask bool, with at least RELU_MIN_WORK elements."""
    arrays = isinstance(grad_out, np.ndarray) and isinstance(mask, np.ndarray)
    if (
        not arrays
        or grad_out.dtype not in _FLOATS
        or mask.dtype != np.bool_
        or grad_out.shape != mask.shape
        or not (grad_out.flags.c_contiguous and mask.flags.c_contiguous)
        or grad_out.size < RELU_MIN_WORK
    ):
        return None
    out = np.empty_like(grad_out)
    with threads_for(grad_out.size):
        _relu_backward(grad_out.reshape(-1), mask.reshape(-1), out.reshape(-1))
    return out


@njit(parallel=True, cache=True)
def _relu(x, y):
    for i in prange(x.size):
        v = x[i]
        # np.maximum(v, 0): v where v > 0, NaN where NaN, else +0 (also for -0.0).
        y[i] = v if v > 0 or v != v else 0


def relu(x):
    """Same contract as the reference in ``tinymaskrcnn.nn.layers.ReLU.forward`` in
    inference: a new array max(x, 0), x unchanged. None for anything but a contiguous
    float array (the reference runs)."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or not x.flags.c_contiguous:
        return None
    y = np.empty_like(x)
    with threads_for(x.size):
        _relu(x.reshape(-1), y.reshape(-1))
    return y


@njit(parallel=True, cache=True)
def _max_pool(x, kh, kw, sh, sw, ph, pw, with_argmax, lowest, zero, y, winner):
    # x (P, H, W) planes -> y, winner (P, Ho, Wo); padding never wins (it reads as -inf).
    # The reference's rules, as in cuda_layers._max_pool: strictly greater wins, so the
    # first maximum in scan order does; a NaN sticks in inference (np.maximum) and never
    # wins with argmax (``window > best``). The choice is a select, not a branch: on
    # real maps "greater" is a coin toss the branch predictor loses (30 ns an output).
    planes, h, w = x.shape
    ho, wo = y.shape[1], y.shape[2]
    for p in prange(planes):
        for row in range(ho):
            r0 = row * sh - ph
            a0, a1 = max(0, -r0), min(kh, h - r0)  # taps inside the map
            for col in range(wo):
                q0 = col * sw - pw
                b0, b1 = max(0, -q0), min(kw, w - q0)
                best, arg, nan = lowest, 0, zero  # nan: 0 until a NaN is met
                for a in range(a0, a1):
                    for b in range(b0, b1):
                        v = x[p, r0 + a, q0 + b]
                        take = v > best
                        best = v if take else best
                        arg = (r0 + a) * w + q0 + b if take else arg
                        nan = v if (v != v) & (nan == nan) else nan  # the first NaN
                if not with_argmax and nan != nan:
                    best = nan  # np.maximum's NaN sticks (with argmax a NaN never wins)
                y[p, row, col] = best
                if with_argmax:
                    winner[p, row, col] = arg


def max_pool2d(x, kernel_size, stride, padding, out_hw, argmax):
    """Same contract as ``tinymaskrcnn.nn.layers.max_pool2d`` with checked pairs and the
    output size: y (N, C, Ho, Wo) and, with ``argmax``, the flat index of each winner
    (int64). None for anything but a float host array, and for inference on a map below
    ``PARALLEL_MIN_WORK`` elements: there this runs on one thread, and the reference's
    nine vectorised passes are faster (the shapes stem, 1 x 16 x 64 x 64: 0.23 against
    0.33 ms); from there on two threads win (ResNet-50's stem: 57.6 -> 40.8 ms). With
    argmax it always runs (a shapes training batch: 5.4 -> 1.3 ms)."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        return None
    if not argmax and x.size < numba_threads.PARALLEL_MIN_WORK:
        return None
    n, c, h, w = x.shape
    ho, wo = out_hw
    planes = np.ascontiguousarray(x).reshape(n * c, h, w)
    y = np.empty((n * c, ho, wo), x.dtype)
    winner = np.empty((n * c, ho, wo) if argmax else (1, 1, 1), np.int64)
    with threads_for(x.size):
        _max_pool(
            planes,
            *kernel_size,
            *stride,
            *padding,
            argmax,
            x.dtype.type(-np.inf),
            x.dtype.type(0),
            y,
            winner,
        )
    y = y.reshape(n, c, ho, wo)
    return (y, winner.reshape(n, c, ho, wo)) if argmax else y
