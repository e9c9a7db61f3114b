"""Numba CPU kernels for nn/im2col.py: the im2col and col2im copies, in parallel.

What was measured (benchmarks/RESULTS.md, "Backbone"): the matrix product of a
convolution is already BLAS (OpenBLAS sgemm, multi-threaded) in the reference, and no
Numba loop comes near it, so it stays. What the reference does single-threaded is the
copying around it: im2col (a strided slice copy per kernel tap) and col2im (a strided
add per tap). These kernels do the same copies with every core, one (image, channel)
plane per parallel iteration -- planes never overlap, so col2im needs no atomics.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _im2col(xp, kh, kw, sh, sw, dh, dw, r0, r1, wo, cols):
    n, c = xp.shape[0], xp.shape[1]
    r = r1 - r0
    for nc in prange(n * c):
        b, ch = nc // c, nc % c
        for i in range(kh):
            for j in range(kw):
                k = (ch * kh + i) * kw + j
                for y in range(r):
                    src_y = (r0 + y) * sh + i * dh
                    base = y * wo
                    if sw == 1:  # contiguous rows: a plain copy the compiler vectorises
                        cols[b, k, base : base + wo] = xp[b, ch, src_y, j * dw : j * dw + wo]
                    else:
                        for x in range(wo):
                            cols[b, k, base + x] = xp[b, ch, src_y, x * sw + j * dw]


@njit(parallel=True, cache=True)
def _col2im(cols, kh, kw, sh, sw, dh, dw, r0, r1, wo, out):
    n, c = out.shape[0], out.shape[1]
    r = r1 - r0
    for nc in prange(n * c):
        b, ch = nc // c, nc % c
        for i in range(kh):
            for j in range(kw):
                k = (ch * kh + i) * kw + j
                for y in range(r):
                    dst_y = (r0 + y) * sh + i * dh
                    base = y * wo
                    for x in range(wo):
                        out[b, ch, dst_y, x * sw + j * dw] += cols[b, k, base + x]


def im2col(xp, kernel_size, stride, dilation, rows, out=None):
    """Same contract as ``tinymaskrcnn.nn.im2col.im2col``."""
    (kh, kw), (sh, sw), (dh, dw), (r0, r1) = kernel_size, stride, dilation, rows
    n, c, _, wp = xp.shape
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    shape = (n, c * kh * kw, (r1 - r0) * wo)
    if out is None:
        cols = np.empty(shape, dtype=xp.dtype)
    else:
        cols = out.reshape(-1)[: shape[0] * shape[1] * shape[2]].reshape(shape)
    _im2col(np.ascontiguousarray(xp), kh, kw, sh, sw, dh, dw, r0, r1, wo, cols)
    return cols


def col2im(cols, out, kernel_size, stride, dilation, rows):
    """Same contract as ``tinymaskrcnn.nn.conv.col2im`` (adds into ``out`` in place)."""
    (kh, kw), (sh, sw), (dh, dw), (r0, r1) = kernel_size, stride, dilation, rows
    n, c, _, wp = out.shape
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    cols = np.ascontiguousarray(cols).reshape(n, c * kh * kw, (r1 - r0) * wo)
    _col2im(cols, kh, kw, sh, sw, dh, dw, r0, r1, wo, out)
    return out
