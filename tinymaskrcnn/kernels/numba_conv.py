"""Numba CPU kernels for nn/im2col.py: the im2col and col2im copies, in parallel.

What was measured (benchmarks/RESULTS.md, "Backbone"): the matrix product of a
convolution is already BLAS (OpenBLAS sgemm, multi-threaded) in the reference, and no
Numba loop comes near it, so it stays. What the reference does single-threaded is the
copying around it: im2col (a strided slice copy per kernel tap) and col2im (a strided
add per tap). These kernels do the same copies with every core, one (image, channel)
plane per parallel iteration -- planes never overlap, so col2im needs no atomics.

With the product at BLAS's peak, the one way left to a faster convolution is fewer
multiplies: ``conv2d`` computes the 3x3 stride-1 convolutions (most of a ResNet-50-FPN's
arithmetic) by Winograd's minimal filtering, below, and declines every other geometry.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_threads import threads_for

# Both copies run on flat (plane, cell) views with unsigned offsets: Numba checks every
# signed index for Python's negative wrap-around, and per-row slice assignments build a
# view each; on the shapes model's small maps the two cost 1.1-5x the copy itself
# (benchmarks/RESULTS.md, "An Intel AVX-512 VM ...").


@njit(parallel=True, cache=True)
def _im2col(xp, kh, kw, sh, sw, dh, dw, r0, r1, wo, cols):
    n, c, hp, wp = xp.shape
    r = r1 - r0
    planes = xp.reshape(n * c, hp * wp)
    rows = cols.reshape(n * c * kh * kw, r * wo)
    step = np.uint64(sw)
    for nc in prange(n * c):
        src = planes[nc]
        for i in range(kh):
            for j in range(kw):
                dst = rows[(nc * kh + i) * kw + j]
                for y in range(r):
                    s0 = np.uint64(((r0 + y) * sh + i * dh) * wp + j * dw)
                    d0 = np.uint64(y * wo)
                    for x in range(np.uint64(wo)):
                        dst[d0 + x] = src[s0 + x * step]


@njit(parallel=True, cache=True)
def _col2im(cols, kh, kw, sh, sw, dh, dw, r0, r1, wo, out):
    n, c, hp, wp = out.shape
    r = r1 - r0
    planes = out.reshape(n * c, hp * wp)
    rows = cols.reshape(n * c * kh * kw, r * wo)
    step = np.uint64(sw)
    for nc in prange(n * c):
        dst = planes[nc]
        for i in range(kh):
            for j in range(kw):
                src = rows[(nc * kh + i) * kw + j]
                for y in range(r):
                    d0 = np.uint64(((r0 + y) * sh + i * dh) * wp + j * dw)
                    s0 = np.uint64(y * wo)
                    for x in range(np.uint64(wo)):
                        dst[d0 + x * step] += src[s0 + x]


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
    with threads_for(cols.size):
        _im2col(np.ascontiguousarray(xp), kh, kw, sh, sw, dh, dw, r0, r1, wo, cols)
    return cols


def col2im(cols, out, kernel_size, stride, dilation, rows):
    """Same contract as ``tinymaskrcnn.nn.conv.col2im`` (adds into ``out`` in place)."""
    (kh, kw), (sh, sw), (dh, dw), (r0, r1) = kernel_size, stride, dilation, rows
    n, c, _, wp = out.shape
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    cols = np.ascontiguousarray(cols).reshape(n, c * kh * kw, (r1 - r0) * wo)
    target = out if out.flags.c_contiguous else np.ascontiguousarray(out)
    with threads_for(cols.size):
        _col2im(cols, kh, kw, sh, sw, dh, dw, r0, r1, wo, target)
    if target is not out:
        out[...] = target
    return out


# --- Winograd F(2x2, 3x3): stride-1 3x3 convolutions with 2.25x fewer multiplies --------
#
# Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016). A 2x2 block
# of outputs of a 3x3 filter g over the 4x4 input tile d under it is
#     Y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise, 16 products, not 36)
# with
#     B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
#     G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
#     A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
# Summed over input channels, each of the 16 elementwise positions xi is one matrix
# product over all tiles: M[xi] (O, T) = U[xi] (O, C) @ V[xi] (C, T), which stays in
# BLAS. The transforms only add and subtract (the 1/2s live in U, computed in float64),
# so float32 rounding grows little (measured in benchmarks/RESULTS.md, "Backbone").
#
# A band of tile rows is transformed, multiplied and written back at a time, so V and
# M together stay under WINOGRAD_BAND_BYTES whatever the image size; the two buffers are
# reused from band to band. A band also holds at most WINOGRAD_BAND_TILES tiles: with
# few channels the byte budget alone let a band take a whole batch of small maps, whose
# V and M then went out to memory between the transform and the product. Measured on
# the AVX-512 VM (benchmarks/RESULTS.md, 2026-12-07 and 2026-12-08; forward / weight
# gradient): the shapes mask head's 128 RoIs, 64 channels at 14 x 14, by the 64 MiB
# budget alone 16.5 / 23.2 ms at 2 threads; at 4096 tiles 13.5 / 18.1 one day and
# 19.6 / 23.4 the next, at 1024 tiles 15.2 / 19.4 and 15.4 / 19.7. On one thread, as
# the shapes recipe trains, 1024 tiles won every case timed (the mask head 20.7 / 25.3
# -> 16.6 / 20.1 ms; ResNet-50's 128 channels at 100 x 152, 29.9 / 33.8 -> 22.3 /
# 26.6), and whole training steps took a median 9-14 ms less (in one process,
# alternating). ResNet-50-FPN's forward at 2 threads: alike at either size.

WINOGRAD_BAND_BYTES = 64 * 2**20
WINOGRAD_BAND_TILES = 1024

# Below this size of the product (N * H * W * C * O, about a ninth of its multiply-adds)
# the transforms cost more than the multiplies they save, and im2col's one GEMM in BLAS
# wins: measured on the AVX2 VM (benchmarks/RESULTS.md, "Every benchmark again on
# another VM"), the shapes model's convolutions (16-128 channels on maps of 4 x 4 to
# 32 x 32, up to 2^24 at a batch of 4) ran up to 2x faster on im2col, ResNet-50's (from
# 2^26 up) 1.4-1.8x faster on Winograd; around 2^24 the two tied.
WINOGRAD_MIN_PRODUCT = 2**24


@njit(parallel=True, cache=True)
def _winograd_weights(w, u):
    # w (O, C, 3, 3) -> u (16, O, C): G g G^T in float64, position xi = 4 a + b. With
    # g's rows g0, g1, g2, G g is (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2); the
    # same combinations of its columns give G g G^T.
    outs, channels = w.shape[0], w.shape[1]
    for o in prange(outs):
        t = np.empty((4, 3))
        for c in range(channels):
            for j in range(3):
                g0 = np.float64(w[o, c, 0, j])
                g1 = np.float64(w[o, c, 1, j])
                g2 = np.float64(w[o, c, 2, j])
                t[0, j] = g0
                t[1, j] = 0.5 * (g0 + g1 + g2)
                t[2, j] = 0.5 * (g0 - g1 + g2)
                t[3, j] = g2
            for a in range(4):
                g0, g1, g2 = t[a, 0], t[a, 1], t[a, 2]
                u[4 * a, o, c] = g0
                u[4 * a + 1, o, c] = 0.5 * (g0 + g1 + g2)
                u[4 * a + 2, o, c] = 0.5 * (g0 - g1 + g2)
                u[4 * a + 3, o, c] = g2


def winograd_weights(w, dtype):
    """U (16, O, C) of ``dtype``: G g G^T of every filter g of w (O, C, 3, 3)."""
    u = np.empty((16, w.shape[0], w.shape[1]), dtype=dtype)
    _winograd_weights(np.ascontiguousarray(w), u)
    return u


@njit(parallel=True, cache=True)
def _winograd_input(x, ph, pw, g0, g1, th, tw, v):
    # x (N, C, H, W) -> v (16, C, (g1 - g0) * tw): B^T d B of every tile of the tile rows
    # g0 .. g1 - 1, numbered through the batch (row g: image g // th, tile row g % th).
    _, channels, h, w = x.shape
    wb = 2 * tw + 2  # input columns under a row of tiles, padding included
    for c in prange(channels):
        rows = np.empty((4, wb), x.dtype)
        comb = np.empty((4, wb), x.dtype)
        j0, j1 = min(pw, wb), min(wb, w + pw)  # buffer columns that hold image columns
        for g in range(g0, g1):
            n, ty = g // th, g % th
            for i in range(4):
                src = 2 * ty - ph + i
                rows[i, :j0] = 0
                rows[i, j1:] = 0
                if 0 <= src < h and j1 > j0:
                    rows[i, j0:j1] = x[n, c, src, : j1 - pw]
                else:
                    rows[i, j0:j1] = 0
            # B^T d: the four row combinations, for every column at once.
            for j in range(wb):
                comb[0, j] = rows[0, j] - rows[2, j]
                comb[1, j] = rows[1, j] + rows[2, j]
                comb[2, j] = rows[2, j] - rows[1, j]
                comb[3, j] = rows[1, j] - rows[3, j]
            # (B^T d) B: the same combinations of each tile's four columns.
            base = (g - g0) * tw
            for a in range(4):
                for t in range(tw):
                    q0, q1 = comb[a, 2 * t], comb[a, 2 * t + 1]
                    q2, q3 = comb[a, 2 * t + 2], comb[a, 2 * t + 3]
                    v[4 * a, c, base + t] = q0 - q2
                    v[4 * a + 1, c, base + t] = q1 + q2
                    v[4 * a + 2, c, base + t] = q2 - q1
                    v[4 * a + 3, c, base + t] = q1 - q3


@njit(parallel=True, cache=True)
def _winograd_output(m, bias, g0, g1, th, tw, y):
    # m (16, O, (g1 - g0) * tw) -> y (N, O, Ho, Wo) under tile rows g0 .. g1 - 1: A^T m A + bias.
    _, outs, ho, wo = y.shape
    for o in prange(outs):
        b = bias[o]
        for g in range(g0, g1):
            n, ty = g // th, g % th
            base = (g - g0) * tw
            r0, r1 = 2 * ty, 2 * ty + 1
            for t in range(tw):
                k = base + t
                # A^T m: two row combinations of the 4 x 4 product, column by column.
                s00 = m[0, o, k] + m[4, o, k] + m[8, o, k]
                s01 = m[1, o, k] + m[5, o, k] + m[9, o, k]
                s02 = m[2, o, k] + m[6, o, k] + m[10, o, k]
                s03 = m[3, o, k] + m[7, o, k] + m[11, o, k]
                s10 = m[4, o, k] - m[8, o, k] - m[12, o, k]
                s11 = m[5, o, k] - m[9, o, k] - m[13, o, k]
                s12 = m[6, o, k] - m[10, o, k] - m[14, o, k]
                s13 = m[7, o, k] - m[11, o, k] - m[15, o, k]
                c0, c1 = 2 * t, 2 * t + 1
                y[n, o, r0, c0] = s00 + s01 + s02 + b
                if c1 < wo:
                    y[n, o, r0, c1] = s01 - s02 - s03 + b
                if r1 < ho:
                    y[n, o, r1, c0] = s10 + s11 + s12 + b
                    if c1 < wo:
                        y[n, o, r1, c1] = s11 - s12 - s13 + b


def winograd_applies(x, weight_shape, stride, dilation, groups) -> bool:
    """True for the convolutions F(2x2, 3x3) computes (3x3, stride 1, no dilation or
    groups) that are large enough to gain from it (``WINOGRAD_MIN_PRODUCT``)."""
    n, c, h, w = x.shape
    return (
        tuple(weight_shape[2:]) == (3, 3)
        and tuple(stride) == (1, 1)
        and tuple(dilation) == (1, 1)
        and groups == 1
        and n > 0
        and n * h * w * c * weight_shape[0] >= WINOGRAD_MIN_PRODUCT
    )


def _tile_bands(n, c, o, ho, wo, dtype):
    """Yield (g0, g1, th, tw, v (16, C, T), m (16, O, T)) for each band of tile rows
    g0 .. g1 - 1 (through the whole batch: small images share a band), T = (g1 - g0) * tw
    tiles; v and m are views of two buffers reused from band to band."""
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    per_row = 16 * (c + o) * tw * np.dtype(dtype).itemsize
    rows = n * th
    band = max(1, min(rows, WINOGRAD_BAND_BYTES // per_row, -(-WINOGRAD_BAND_TILES // tw)))
    v_buf = np.empty(16 * c * band * tw, dtype)
    m_buf = np.empty(16 * o * band * tw, dtype)
    for g0 in range(0, rows, band):
        g1 = min(rows, g0 + band)
        nt = (g1 - g0) * tw
        v = v_buf[: 16 * c * nt].reshape(16, c, nt)
        m = m_buf[: 16 * o * nt].reshape(16, o, nt)
        yield g0, g1, th, tw, v, m


def conv2d(x, weight, bias, stride, padding, dilation, groups):
    """Same contract as ``tinymaskrcnn.nn.conv.conv2d`` for the convolutions Winograd
    F(2x2, 3x3) computes (``winograd_applies``); returns None for any other, which the
    reference then runs (on the numba im2col).
    """
    if not winograd_applies(x, weight.shape, stride, dilation, groups):
        return None
    n, c, h, w = x.shape
    o = weight.shape[0]
    ph, pw = padding
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    u = winograd_weights(weight, x.dtype)
    b = np.zeros(o, x.dtype) if bias is None else np.asarray(bias, dtype=x.dtype).reshape(o)
    x = np.ascontiguousarray(x)
    y = np.empty((n, o, ho, wo), x.dtype)
    for g0, g1, th, tw, v, m in _tile_bands(n, c, o, ho, wo, x.dtype):
        _winograd_input(x, ph, pw, g0, g1, th, tw, v)
        np.matmul(u, v, out=m)
        _winograd_output(m, b, g0, g1, th, tw, y)
    return y


# --- the weight gradient of the same convolutions, by the same transforms ---------------
#
# Y = A^T [U * V] A is linear in U, so the gradient of a loss with respect to U[xi] is
#     dU[xi] (O, C) = sum over tiles of dM[xi] (O, T) @ V[xi]^T (T, C),   dM = A dY A^T,
# dY a tile's 2 x 2 output gradient (outside the output: 0), and chaining through
# U = G g G^T gives dg = G^T dU G per filter. 16 products per tile and filter instead of
# im2col's 36, in BLAS again.


@njit(inline="always")
def _output_grad_pair(d00, d01, d10, d11, a):
    # Row a of A dY: A's rows (1, 0), (1, 1), (1, -1), (0, -1) combine dY's two rows
    # [[d00, d01], [d10, d11]] into four; one sum of two values in the data's dtype.
    if a == 0:
        return d00, d01
    if a == 1:
        return d00 + d10, d01 + d11
    if a == 2:
        return d00 - d10, d01 - d11
    return -d10, -d11


@njit(parallel=True, cache=True)
def _winograd_output_grad(gy, g0, g1, th, tw, m):
    # gy (N, O, Ho, Wo) -> m (16, O, (g1 - g0) * tw): A dY A^T of every tile of the tile
    # rows g0 .. g1 - 1 (a tile's rows or columns past the output read as 0): row a of
    # A dY, then the same combinations of its two columns, into m[4a .. 4a + 3]. One task
    # per (output channel, tile row). The rows a go in the outer loop: m's 16 planes lie
    # O * T values apart, often a multiple of 4 KiB, and writing all 16 in turn made them
    # evict one another from the cache (4 ms for 4 x 64 x 32 x 32, against 0.8 for the
    # input transform of the same size, which writes four at a time as here).
    _, outs, ho, wo = gy.shape
    rows_n = g1 - g0
    zero = m.dtype.type(0)
    for task in prange(outs * rows_n):
        o = task // rows_n
        g = g0 + task % rows_n
        n, ty = g // th, g % th
        r0, r1 = 2 * ty, 2 * ty + 1
        base = (g - g0) * tw
        for a in range(4):
            for t in range(tw):
                c0, c1 = 2 * t, 2 * t + 1
                d00 = gy[n, o, r0, c0]
                d01 = gy[n, o, r0, c1] if c1 < wo else zero
                d10 = gy[n, o, r1, c0] if r1 < ho else zero
                d11 = gy[n, o, r1, c1] if r1 < ho and c1 < wo else zero
                e0, e1 = _output_grad_pair(d00, d01, d10, d11, a)
                k = base + t
                m[4 * a, o, k] = e0
                m[4 * a + 1, o, k] = e0 + e1
                m[4 * a + 2, o, k] = e0 - e1
                m[4 * a + 3, o, k] = -e1


@njit(parallel=True, cache=True)
def _winograd_filter_grad(du, gw):
    # du (16, O, C) float64 -> gw (O, C, 3, 3): G^T dU G; G's columns combine dU's four
    # rows into three, (1, 1/2, 1/2, 0), (0, 1/2, -1/2, 0), (0, 1/2, 1/2, 1), then columns.
    outs, channels = du.shape[1], du.shape[2]
    for o in prange(outs):
        t = np.empty((3, 4))
        for c in range(channels):
            for b in range(4):
                u0, u1, u2, u3 = du[b, o, c], du[4 + b, o, c], du[8 + b, o, c], du[12 + b, o, c]
                t[0, b] = u0 + 0.5 * (u1 + u2)
                t[1, b] = 0.5 * (u1 - u2)
                t[2, b] = 0.5 * (u1 + u2) + u3
            for i in range(3):
                u0, u1, u2, u3 = t[i, 0], t[i, 1], t[i, 2], t[i, 3]
                gw[o, c, i, 0] = u0 + 0.5 * (u1 + u2)
                gw[o, c, i, 1] = 0.5 * (u1 - u2)
                gw[o, c, i, 2] = 0.5 * (u1 + u2) + u3


def conv2d_weight_grad(grad_out, x, weight_shape, stride, padding, dilation, groups):
    """grad_w (O, C, 3, 3) of ``conv2d(x, w, ...)`` for the convolutions ``conv2d``
    computes by Winograd (``winograd_applies``), None for any other (the reference then
    runs). grad_out: (N, O, Ho, Wo); x: (N, C, H, W), the forward's input.
    """
    if not winograd_applies(x, weight_shape, stride, dilation, groups):
        return None
    n, c = x.shape[:2]
    o = weight_shape[0]
    ph, pw = padding
    ho, wo = grad_out.shape[2:]
    x = np.ascontiguousarray(x)
    grad_out = np.ascontiguousarray(grad_out, dtype=x.dtype)
    du = np.zeros((16, o, c), x.dtype)
    part = np.empty((16, o, c), x.dtype)
    for g0, g1, th, tw, v, m in _tile_bands(n, c, o, ho, wo, x.dtype):
        _winograd_input(x, ph, pw, g0, g1, th, tw, v)
        _winograd_output_grad(grad_out, g0, g1, th, tw, m)
        np.matmul(m, v.transpose(0, 2, 1), out=part)
        du += part
    gw = np.empty((o, c, 3, 3), x.dtype)
    _winograd_filter_grad(du.astype(np.float64), gw)
    return gw


# --- the transposed convolution whose kernel equals its stride (the mask head's 2 x 2 / 2) -
#
# With stride = kernel, no padding and no dilation, input cell (i, j) alone makes the
# kh x kw block of outputs at (i kh .. i kh + kh - 1, j kw .. j kw + kw - 1): the
# reference's columns (w^T @ x, nn/conv.py ``_input_grad``) hold every output once, and
# col2im adds each into a map of zeros. Here the same product's columns are written to
# their places with the bias added, in one pass: no zeroed map, no second pass for the
# bias, and the same values (0 + col, then + bias).


@njit(parallel=True, cache=True)
def _place_blocks(cols, bias, kh, kw, w_in, y):
    # cols (N, O * kh * kw, H * W) -> y (N, O, H * kh, W * kw); one (image, channel) plane
    # per task
    n, o, ho, wo = y.shape
    h_in = ho // kh
    for task in prange(n * o):
        img, ch = task // o, task % o
        b = bias[ch]
        for a in range(kh):
            for c in range(kw):
                row = cols[img, (ch * kh + a) * kw + c]
                for i in range(h_in):
                    for j in range(w_in):
                        y[img, ch, i * kh + a, j * kw + c] = row[i * w_in + j] + b


def conv_transpose2d(x, weight, bias, stride, padding, out_hw, dilation, groups):
    """Same contract as the CUDA ``conv_transpose2d`` for a host ``x`` (N, C, H, W) whose
    blocks do not overlap (stride = kernel, no padding, dilation or groups, out_hw =
    (H kh, W kw)); None for any other, which the reference runs."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        return None
    n, c, h, w = x.shape
    _, o, kh, kw = weight.shape
    if (
        tuple(stride) != (kh, kw)
        or tuple(padding) != (0, 0)
        or tuple(dilation) != (1, 1)
        or groups != 1
        or tuple(out_hw) != (h * kh, w * kw)
        or n == 0
    ):
        return None
    # The reference's product, shaped as there: (O kh kw, C) @ (C, H W) per image.
    wt = np.asarray(weight, dtype=x.dtype).reshape(1, c, o * kh * kw).transpose(0, 2, 1)
    cols = np.matmul(wt, x.reshape(n, 1, c, h * w)).reshape(n, o * kh * kw, h * w)
    b = np.zeros(o, x.dtype) if bias is None else np.asarray(bias, dtype=x.dtype).reshape(o)
    y = np.empty((n, o, h * kh, w * kw), x.dtype)
    with threads_for(y.size):
        _place_blocks(np.ascontiguousarray(cols), b, kh, kw, w, y)
    return y
