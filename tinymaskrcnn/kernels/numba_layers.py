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
each for the argmax). In training this reads each window once, a plane per parallel
iteration (a shapes training batch: 5.4 -> 1.3 ms); in inference, where only the maxima
are wanted, it reduces each output row's window rows first, all columns at once, then
the columns (ResNet-50's stem at 800 x 1216: 52 ms by the reference, 20 ms).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

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
    r = flat
    if residual is not None:
        r = np.ascontiguousarray(residual, dtype=y.dtype).reshape(n * c, h * w)
    with threads_for(y.size):
        _bias_add_relu(
            flat, s, scale is not None, b, r, residual is not None, relu, y.dtype.type(0)
        )
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
def _max_pool(x, kh, kw, sh, sw, ph, pw, lowest, y, winner):
    # Training: x (P, H, W) planes -> y, winner (P, Ho, Wo); padding never wins (it reads
    # as -inf). The reference's rules, as in cuda_layers._max_pool: strictly greater wins,
    # so the first maximum in scan order does, and a NaN never does (``window > best``).
    # The choice is a select, not a branch: on real maps "greater" is a coin toss the
    # branch predictor loses (30 ns an output).
    planes, h, w = x.shape
    ho, wo = y.shape[1], y.shape[2]
    for p in prange(planes):
        for row in range(ho):
            r0 = row * sh - ph
            a0, a1 = max(0, -r0), min(kh, h - r0)  # taps inside the map
            for col in range(wo):
                q0 = col * sw - pw
                b0, b1 = max(0, -q0), min(kw, w - q0)
                best, arg = lowest, 0
                for a in range(a0, a1):
                    for b in range(b0, b1):
                        v = x[p, r0 + a, q0 + b]
                        take = v > best
                        best = v if take else best
                        arg = (r0 + a) * w + q0 + b if take else arg
                y[p, row, col] = best
                winner[p, row, col] = arg


@njit(inline="always")
def _nan_max(best, v):
    # np.maximum's value: v when greater or NaN, so a NaN sticks once met. (Which of two
    # equal zeros, or of two NaNs, comes back is left open, as by np.maximum's SIMD loop.)
    return v if (v > best) | (v != v) else best


@njit(parallel=True, cache=True)
def _max_pool_values(x, kh, kw, sh, sw, ph, pw, lowest, y):
    # Inference: x (P, H, W) planes -> y (P, Ho, Wo), the windows' maxima alone. The
    # window's rows are reduced first, for every column at once (contiguous, so it
    # vectorises), into one row m; then each output takes the max of its kw columns of
    # m. The same maxima as window by window; padding never wins (it reads as -inf).
    planes, h, w = x.shape
    ho, wo = y.shape[1], y.shape[2]
    for p in prange(planes):
        m = np.empty(w, x.dtype)
        for row in range(ho):
            r0 = row * sh - ph
            a0, a1 = max(0, -r0), min(kh, h - r0)  # taps inside the map
            first = x[p, r0 + a0]
            for j in range(w):
                m[j] = first[j]
            for a in range(a0 + 1, a1):
                src = x[p, r0 + a]
                for j in range(w):
                    m[j] = _nan_max(m[j], src[j])
            for col in range(wo):
                q0 = col * sw - pw
                b0, b1 = max(0, -q0), min(kw, w - q0)
                best = lowest
                for b in range(b0, b1):
                    best = _nan_max(best, m[q0 + b])
                y[p, row, col] = best


def max_pool2d(x, kernel_size, stride, padding, out_hw, argmax):
    """Same contract as ``tinymaskrcnn.nn.layers.max_pool2d`` with checked pairs and the
    output size: y (N, C, Ho, Wo) and, with ``argmax``, the flat index of each winner
    (int64). None for anything but a float host array. Inference takes the maxima alone
    (``_max_pool_values``: rows, then columns; ResNet-50's stem at 800 x 1216, 2 threads:
    57 -> 20 ms, the reference 52 ms; the shapes stem 0.16 -> 0.13 ms), training the
    window-by-window scan with the argmax (a shapes training batch: 5.4 -> 1.3 ms)."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        return None
    n, c, h, w = x.shape
    ho, wo = out_hw
    planes = np.ascontiguousarray(x).reshape(n * c, h, w)
    y = np.empty((n * c, ho, wo), x.dtype)
    lowest = x.dtype.type(-np.inf)
    if not argmax:
        with threads_for(x.size):
            _max_pool_values(planes, *kernel_size, *stride, *padding, lowest, y)
        return y.reshape(n, c, ho, wo)
    winner = np.empty((n * c, ho, wo), np.int64)
    with threads_for(x.size):
        _max_pool(planes, *kernel_size, *stride, *padding, lowest, y, winner)
    return y.reshape(n, c, ho, wo), winner.reshape(n, c, ho, wo)
