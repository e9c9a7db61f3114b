"""Numba CPU kernels for nn/layers.py: the fused inference epilogue and ReLU, in parallel.

``bias_add_relu_`` ends every folded convolution of the backbone's inference path
(bias from the frozen batch norm, the block's shortcut, ReLU). NumPy does that in two
or three single-threaded passes over the feature map; this does it in one pass, one
(image, channel) plane per parallel iteration. ``relu`` is nn.ReLU in inference (the RPN
and mask heads' ReLUs): ``np.maximum(x, 0)`` on all threads, with its exact results.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_threads import threads_for


@njit(parallel=True, cache=True)
def _bias_add_relu(y, bias, residual, has_residual, relu):
    planes, size = y.shape
    channels = bias.shape[0]
    for p in prange(planes):
        b = bias[p % channels]
        for i in range(size):
            v = y[p, i] + b
            if has_residual:
                v += residual[p, i]
            if relu and v < 0:
                v = 0
            y[p, i] = v


def bias_add_relu_(y, bias, residual=None, relu=True):
    """Same contract as ``tinymaskrcnn.nn.layers.bias_add_relu_`` (in place on y)."""
    n, c, h, w = y.shape
    if not y.flags.c_contiguous:  # never for a convolution's output; keep the contract
        y[...] = bias_add_relu_(np.ascontiguousarray(y), bias, residual, relu)
        return y
    flat = y.reshape(n * c, h * w)
    b = np.ascontiguousarray(np.asarray(bias).reshape(-1), dtype=y.dtype)
    with threads_for(y.size):
        if residual is None:
            _bias_add_relu(flat, b, flat, False, relu)
        else:
            r = np.ascontiguousarray(residual, dtype=y.dtype).reshape(n * c, h * w)
            _bias_add_relu(flat, b, r, True, relu)
    return y


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
