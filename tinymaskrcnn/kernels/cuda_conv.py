"""Numba CUDA kernels for nn/conv.py: conv2d and its backward as im2col + tiled matmul.

The same algorithm as the reference, on the GPU, one image at a time (so the columns
take C*kh*kw*Ho*Wo floats of device memory, whatever the batch):

* ``_im2col``: one thread per column entry; neighbouring threads write neighbouring
  output positions (coalesced) and read neighbouring input pixels. Zero padding is
  read as 0 by a bounds test, so no padded copy of the input is ever made.
* ``_matmul``: the classic shared-memory tiled product, 16x16 tiles: each block loads
  a tile of A and a tile of B into shared memory once and every thread reuses them 16
  times. Batched over blockIdx.z (the groups of a grouped convolution), with flags for
  transposed operands and for accumulating (grad_w sums over images).
* ``_col2im``: the adjoint of im2col written as a *gather* -- one thread per input
  pixel sums the column entries that read it -- so it needs no atomics and is
  deterministic.
* The bias gradient is a product with a vector of ones (sum over positions).
* ``conv_transpose2d`` is the input gradient of the convolution whose weight it holds
  (the reference's definition, nn/conv_transpose.py): the same product and col2im, with
  the transposed convolution's input in the place of the output gradient. ``linear``
  is the tiled product on its own (x @ weight.T). Both run on device inputs only and
  return None for host ones: the NumPy heads they serve are cheaper than two copies
  (docs/architecture.md, Backends and dispatch).

Host wrappers take NumPy arrays (copied in, result copied back) or device arrays (the
result stays on the device). Arguments arrive validated by ``nn/conv.py``. Scalars
such as zero are passed in the arrays' dtype: Numba types a float literal as float64.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from . import is_device_array, to_device, to_host

_TILE = 16
_THREADS_2D = (16, 16)


def _make_matmul(shared_dtype):
    @cuda.jit
    def matmul(a, b, c, trans_a, trans_b, accumulate, zero):
        # c[z] (M, N) (+)= op(a[z % len(a)]) (M, K) @ op(b[z]) (K, N)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        col = cuda.blockIdx.x * _TILE + tx
        row = cuda.blockIdx.y * _TILE + ty
        z = cuda.blockIdx.z
        za = z % a.shape[0]
        m, n = c.shape[1], c.shape[2]
        k = a.shape[1] if trans_a else a.shape[2]
        tile_a = cuda.shared.array((_TILE, _TILE), shared_dtype)
        tile_b = cuda.shared.array((_TILE, _TILE), shared_dtype)
        acc = zero
        for t in range((k + _TILE - 1) // _TILE):
            ka = t * _TILE + tx
            if row < m and ka < k:
                tile_a[ty, tx] = a[za, ka, row] if trans_a else a[za, row, ka]
            else:
                tile_a[ty, tx] = zero
            kb = t * _TILE + ty
            if col < n and kb < k:
                tile_b[ty, tx] = b[z, col, kb] if trans_b else b[z, kb, col]
            else:
                tile_b[ty, tx] = zero
            cuda.syncthreads()
            for q in range(_TILE):
                acc += tile_a[ty, q] * tile_b[q, tx]
            cuda.syncthreads()
        if row < m and col < n:
            if accumulate:
                c[z, row, col] += acc
            else:
                c[z, row, col] = acc

    return matmul


_MATMUL = {np.dtype(np.float32): _make_matmul(float32), np.dtype(np.float64): _make_matmul(float64)}


def _matmul(a, b, c, trans_a=False, trans_b=False, accumulate=False):
    """c[z] (+)= op(a[z % len(a)]) @ op(b[z]) for device arrays a, b, c of one dtype."""
    z, m, n = c.shape
    grid = (math.ceil(n / _TILE), math.ceil(m / _TILE), z)
    zero = c.dtype.type(0)
    _MATMUL[np.dtype(c.dtype)][grid, (_TILE, _TILE)](a, b, c, trans_a, trans_b, accumulate, zero)


@cuda.jit
def _im2col(x, img, kh, kw, sh, sw, ph, pw, dh, dw, wo, zero, cols):
    # cols (C*kh*kw, Ho*Wo) of image ``img``; x index = column, y index = row (coalesced)
    p, k = cuda.grid(2)
    if k >= cols.shape[0] or p >= cols.shape[1]:
        return
    taps = kh * kw
    ch, i, j = k // taps, (k % taps) // kw, k % kw
    y = (p // wo) * sh - ph + i * dh
    xx = (p % wo) * sw - pw + j * dw
    if 0 <= y < x.shape[2] and 0 <= xx < x.shape[3]:
        cols[k, p] = x[img, ch, y, xx]
    else:
        cols[k, p] = zero


@cuda.jit
def _col2im(cols, img, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, zero, gx):
    # gx[img] (C, H, W): every input pixel gathers the column entries that read it
    q, ch = cuda.grid(2)
    h, w = gx.shape[2], gx.shape[3]
    if ch >= gx.shape[1] or q >= h * w:
        return
    y, xx = q // w, q % w
    acc = zero
    for i in range(kh):
        ty = y + ph - i * dh
        if ty < 0 or ty % sh != 0 or ty // sh >= ho:
            continue
        for j in range(kw):
            tx = xx + pw - j * dw
            if tx < 0 or tx % sw != 0 or tx // sw >= wo:
                continue
            acc += cols[(ch * kh + i) * kw + j, (ty // sh) * wo + tx // sw]
    gx[img, ch, y, xx] = acc


@cuda.jit
def _add_bias(y, bias):
    # y (N, O, P) += bias[o]
    p, no = cuda.grid(2)
    if no < y.shape[0] * y.shape[1] and p < y.shape[2]:
        y[no // y.shape[1], no % y.shape[1], p] += bias[no % y.shape[1]]


def _grid(cols: int, rows: int):
    return (math.ceil(cols / _THREADS_2D[0]), math.ceil(rows / _THREADS_2D[1]))


def _geometry(x_shape, w_shape, stride, padding, dilation):
    n, c, h, w = x_shape
    o, cg, kh, kw = w_shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    pointwise = (kh, kw) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)
    return n, c, h, w, o, cg, kh, kw, ho, wo, pointwise


def _cols_of(d_x, img, geom, stride, padding, dilation, d_cols):
    n, c, h, w, o, cg, kh, kw, ho, wo, pointwise = geom
    if pointwise:  # the image itself is the column matrix
        return d_x[img].reshape(c, h * w)
    _im2col[_grid(ho * wo, c * kh * kw), _THREADS_2D](
        d_x, img, kh, kw, *stride, *padding, *dilation, wo, d_x.dtype.type(0), d_cols
    )
    return d_cols


def _input_grad(d_w, gy, img, geom, stride, padding, dilation, d_cols, d_gx):
    """d_gx[img] = the input gradient of one image's output gradient gy (groups, O/g, P):
    weight.T @ gy, put back onto the input grid by col2im (or directly when 1 x 1)."""
    n, c, h, w, o, cg, kh, kw, ho, wo, pointwise = geom
    groups = d_w.shape[0]
    if pointwise:
        _matmul(d_w, gy, d_gx[img].reshape(groups, cg, h * w), trans_a=True)
        return
    _matmul(d_w, gy, d_cols.reshape(groups, cg * kh * kw, ho * wo), trans_a=True)
    _col2im[_grid(h * w, c), _THREADS_2D](
        d_cols, img, kh, kw, *stride, *padding, *dilation, ho, wo, d_gx.dtype.type(0), d_gx
    )


def conv2d(x, weight, bias, stride, padding, dilation, groups):
    """Same contract as ``tinymaskrcnn.nn.conv.conv2d`` (checked arguments, pairs)."""
    on_device = is_device_array(x)
    dtype = np.dtype(x.dtype)
    d_x = to_device(x, dtype)
    geom = _geometry(x.shape, weight.shape, stride, padding, dilation)
    n, c, h, w, o, cg, kh, kw, ho, wo, pointwise = geom
    k = cg * kh * kw
    d_w = to_device(weight, dtype).reshape(groups, o // groups, k)
    d_y = cuda.device_array((n, o, ho * wo), dtype=dtype)
    d_cols = None if pointwise else cuda.device_array((c * kh * kw, ho * wo), dtype=dtype)
    for img in range(n):
        cols = _cols_of(d_x, img, geom, stride, padding, dilation, d_cols)
        _matmul(
            d_w, cols.reshape(groups, k, ho * wo), d_y[img].reshape(groups, o // groups, ho * wo)
        )
    if bias is not None and n:
        d_b = to_device(bias, dtype)
        _add_bias[_grid(ho * wo, n * o), _THREADS_2D](d_y, d_b)
    d_y = d_y.reshape(n, o, ho, wo)
    return d_y if on_device else to_host(d_y)


def conv2d_backward(grad_out, x, weight, stride, padding, dilation, groups, input_grad=True,
                    weight_grad=True):  # fmt: skip
    """Same contract as ``tinymaskrcnn.nn.conv.conv2d_backward``."""
    on_device = is_device_array(grad_out)
    dtype = np.dtype(grad_out.dtype)
    geom = _geometry(x.shape, weight.shape, stride, padding, dilation)
    n, c, h, w, o, cg, kh, kw, ho, wo, pointwise = geom
    k, og, p = cg * kh * kw, o // groups, ho * wo
    d_gy = to_device(grad_out, dtype).reshape(n, o, p)
    d_x = to_device(x, dtype)
    d_w = to_device(weight, dtype).reshape(groups, og, k)
    d_gb = to_device(np.zeros((1, o, 1), dtype))
    d_ones = to_device(np.ones((1, p, 1), dtype))
    d_gw = to_device(np.zeros((groups, og, k), dtype)) if weight_grad else None
    d_gx = cuda.device_array((n, c, h, w), dtype=dtype) if input_grad else None
    d_cols = None if pointwise else cuda.device_array((c * kh * kw, p), dtype=dtype)
    for img in range(n):
        gy = d_gy[img]
        _matmul(gy.reshape(1, o, p), d_ones, d_gb, accumulate=True)
        gy = gy.reshape(groups, og, p)
        if weight_grad:
            cols = _cols_of(d_x, img, geom, stride, padding, dilation, d_cols)
            _matmul(gy, cols.reshape(groups, k, p), d_gw, trans_b=True, accumulate=True)
        if input_grad:
            _input_grad(d_w, gy, img, geom, stride, padding, dilation, d_cols, d_gx)
    d_gb = d_gb.reshape(o)
    if d_gw is not None:
        d_gw = d_gw.reshape(weight.shape)
    if on_device:
        return d_gx, d_gw, d_gb
    return (
        None if d_gx is None else to_host(d_gx),
        None if d_gw is None else to_host(d_gw),
        to_host(d_gb),
    )


def conv_transpose2d(x, weight, bias, stride, padding, out_hw, dilation, groups):
    """``nn.conv_transpose2d`` for a device ``x`` (N, C, H, W); None for a host one.

    weight (C, O/groups, kh, kw) is the weight of the convolution from (N, O, Ho, Wo)
    to x's shape, whose input gradient this is; out_hw = (Ho, Wo), output_padding
    included, from the caller's checks. Returns (N, O, Ho, Wo) on the device.
    """
    if not is_device_array(x):
        return None
    dtype = np.dtype(x.dtype)
    n, c, h, w = x.shape
    _, og, kh, kw = weight.shape
    o, (ho, wo) = og * groups, out_hw
    # The geometry of that convolution: its input (N, O, Ho, Wo), its output x.
    geom = _geometry((n, o, ho, wo), (c, og, kh, kw), stride, padding, dilation)
    d_w = to_device(weight, dtype).reshape(groups, c // groups, og * kh * kw)
    d_y = cuda.device_array((n, o, ho, wo), dtype=dtype)
    d_cols = None if geom[-1] else cuda.device_array((o * kh * kw, h * w), dtype=dtype)
    for img in range(n):
        gy = x[img].reshape(groups, c // groups, h * w)
        _input_grad(d_w, gy, img, geom, stride, padding, dilation, d_cols, d_y)
    if bias is not None and n:
        d_y3 = d_y.reshape(n, o, ho * wo)
        _add_bias[_grid(ho * wo, n * o), _THREADS_2D](d_y3, to_device(bias, dtype))
    return d_y


def linear(x, weight, bias):
    """``nn.Linear``'s x @ weight.T + bias for a device ``x`` (K, F_in); None for a host one.

    weight (F_out, F_in), bias (F_out,) or None, host or device. Returns (K, F_out) on
    the device.
    """
    if not is_device_array(x):
        return None
    dtype = np.dtype(x.dtype)
    k, f_out = x.shape[0], weight.shape[0]
    d_y = cuda.device_array((1, k, f_out), dtype=dtype)
    if k:
        d_w = to_device(weight, dtype).reshape(1, *weight.shape)
        _matmul(x.reshape(1, *x.shape), d_w, d_y, trans_b=True)
        if bias is not None:
            _add_bias[_grid(1, k * f_out), _THREADS_2D](
                d_y.reshape(k, f_out, 1), to_device(bias, dtype)
            )
    return d_y.reshape(k, f_out)
