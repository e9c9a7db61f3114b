"""im2col and col2im: the copies on either side of a convolution's matrix product.

Shapes used below:
    N: images          C: channels          kh, kw: kernel size
    Hp, Wp: input size after zero padding   Wo: output width
    R: output rows of one chunk (rows r0 .. r1 - 1)

``im2col`` copies the receptive field of every output position out as a column, so that
a convolution becomes one matrix product (nn/conv.py); ``col2im`` is its adjoint: it
adds columns back onto the padded input grid, overlapping fields summing. Tap (i, j) of
every output position is one strided slice of the padded input, so each is kh*kw slice
copies (``_taps``).

Fast versions (registered in kernels/__init__.py with the convolution's ops): both under
"numba" (kernels/numba_conv.py; the same copies, one (image, channel) plane per core).
"""

from __future__ import annotations

import numpy as np

from .. import kernels


def im2col(xp, kernel_size, stride, dilation, rows, out=None):
    """Copy the receptive fields of output rows [r0, r1) into columns.

    xp:   (N, C, Hp, Wp) input, already zero padded.
    kernel_size, stride, dilation: (kh, kw), (sh, sw), (dh, dw).
    rows: (r0, r1), the output rows wanted.
    out:  optional C-contiguous buffer of at least N*C*kh*kw*R*Wo elements of xp's dtype,
          reused from chunk to chunk (fresh memory for every chunk costs page faults).
    Returns cols (N, C*kh*kw, R*Wo), R = r1 - r0, channel-major then kernel row, column:
    the layout that matches a weight (O, C, kh, kw) reshaped to (O, C*kh*kw).
    """
    fast = kernels.implementation("im2col")
    if fast is not None:
        return fast(xp, kernel_size, stride, dilation, rows, out)
    n, c, _, wp = xp.shape
    (kh, kw), r, wo = kernel_size, rows[1] - rows[0], _width(wp, kernel_size, stride, dilation)
    cols = _buffer(out, (n, c, kh, kw, r, wo), xp.dtype)
    for i, j, ys, xs in _taps(kernel_size, stride, dilation, rows, wo):
        cols[:, :, i, j] = xp[:, :, ys, xs]
    return cols.reshape(n, c * kh * kw, r * wo)


def col2im(cols, out, kernel_size, stride, dilation, rows):
    """Add columns back onto the padded input grid: the adjoint of ``im2col``.

    cols: (N, C*kh*kw, R*Wo) as im2col returns them (here: gradients).
    out:  (N, C, Hp, Wp) padded grid, added to in place (overlapping fields sum).
    Returns out.
    """
    fast = kernels.implementation("col2im")
    if fast is not None:
        return fast(cols, out, kernel_size, stride, dilation, rows)
    n, c, _, wp = out.shape
    (kh, kw), r, wo = kernel_size, rows[1] - rows[0], _width(wp, kernel_size, stride, dilation)
    cols = cols.reshape(n, c, kh, kw, r, wo)
    for i, j, ys, xs in _taps(kernel_size, stride, dilation, rows, wo):
        out[:, :, ys, xs] += cols[:, :, i, j]
    return out


def _width(wp, kernel_size, stride, dilation) -> int:
    """Wo: the output width over a padded input of width Wp."""
    return (wp - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1


def _taps(kernel_size, stride, dilation, rows, wo):
    """Yield (i, j, ys, xs): tap (i, j) of output rows [r0, r1) x columns [0, Wo) is
    the padded input's slice [ys, xs]."""
    (kh, kw), (sh, sw), (dh, dw), (r0, r1) = kernel_size, stride, dilation, rows
    for i in range(kh):
        ys = slice(r0 * sh + i * dh, r0 * sh + i * dh + sh * (r1 - r0 - 1) + 1, sh)
        for j in range(kw):
            yield i, j, ys, slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)


def _buffer(out, shape, dtype):
    """A C-contiguous array of ``shape`` over the start of ``out`` (or a new one)."""
    size = int(np.prod(shape))
    if out is None:
        return np.empty(shape, dtype=dtype)
    return out.reshape(-1)[:size].reshape(shape)


__all__ = ["col2im", "im2col"]
