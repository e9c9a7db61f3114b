"""Numba CPU kernels for nn/layers.py: the fused inference epilogue, in parallel.

``bias_add_relu_`` ends every folded convolution of the backbone's inference path
(bias from the frozen batch norm, the block's shortcut, ReLU). NumPy does that in two
or three single-threaded passes over the feature map; this does it in one pass, one
(image, channel) plane per parallel iteration.
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
