"""Convolution and transposed convolution: im2col + one matrix product, forward and backward.

Shapes used below:
    N: images          C: input channels      O: output channels     G: groups
    H, W: input size   Ho, Wo: output size    kh, kw: kernel size    K: C/G * kh * kw
    Hp, Wp: input size after zero padding     R: output rows of one chunk

A convolution is a matrix product once every receptive field is copied out as a
column (im2col): ``y[n, g] = w[g] (O/G, K) @ cols[n, g] (K, Ho*Wo)``. The product runs
in BLAS, which is why this is fast with no hand-written loops. The columns are
``kh*kw`` times larger than the input, so they are built a chunk at a time (several
whole images, or a band of output rows of one image) to keep the extra memory at
``CHUNK_BYTES`` whatever the image size. 1x1 stride-1 convolutions (most of a
bottleneck) need no columns at all.

Backward is the same product transposed: ``grad_w += grad_y @ cols^T`` and
``grad_cols = w^T @ grad_y``, whose columns are added back onto the (padded) input
grid (col2im). A transposed convolution is exactly the input gradient of a
convolution, so both share the two helpers below.

Fast versions (registered in kernels/__init__.py under "nn/conv.py"): ``im2col`` and
``col2im`` under "numba" (the copies run in parallel; the product stays in BLAS, which a
Numba loop does not come near -- benchmarks/RESULTS.md); the whole ``conv2d`` /
``conv2d_backward`` under "cuda" (im2col and a tiled shared-memory matrix product on the
GPU, device arrays in and out). ``conv_transpose2d`` is built from the same helpers, so
it picks up the numba copies too.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from . import init
from .module import Module, Parameter

# Upper bound on the bytes of one chunk of columns (forward and backward).
CHUNK_BYTES = 64 * 2**20


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or any(int(v) != v for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints; got {value!r}")
    return int(pair[0]), int(pair[1])


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one axis (floor, as torch)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_pos(pairs: dict) -> None:
    for name, (a, b) in pairs.items():
        low = 0 if name == "padding" else 1
        if a < low or b < low:
            raise ValueError(f"{name} must be >= {low}; got ({a}, {b})")


# --- im2col / col2im: the copies around the matrix product -----------------------------


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
    (kh, kw), (sh, sw), (dh, dw), (r0, r1) = kernel_size, stride, dilation, rows
    n, c, _, wp = xp.shape
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    r = r1 - r0
    cols = _buffer(out, (n, c, kh, kw, r, wo), xp.dtype)
    for i in range(kh):
        # Tap (i, j) of every output position: a strided slice of the padded input.
        ys = slice(r0 * sh + i * dh, r0 * sh + i * dh + sh * (r - 1) + 1, sh)
        for j in range(kw):
            xs = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            cols[:, :, i, j] = xp[:, :, ys, xs]
    return cols.reshape(n, c * kh * kw, r * wo)


def _buffer(out, shape, dtype):
    """A C-contiguous array of ``shape`` over the start of ``out`` (or a new one)."""
    size = int(np.prod(shape))
    if out is None:
        return np.empty(shape, dtype=dtype)
    return out.reshape(-1)[:size].reshape(shape)


def col2im(cols, out, kernel_size, stride, dilation, rows):
    """Add columns back onto the padded input grid: the adjoint of ``im2col``.

    cols: (N, C*kh*kw, R*Wo) as im2col returns them (here: gradients).
    out:  (N, C, Hp, Wp) padded grid, added to in place (overlapping fields sum).
    Returns out.
    """
    fast = kernels.implementation("col2im")
    if fast is not None:
        return fast(cols, out, kernel_size, stride, dilation, rows)
    (kh, kw), (sh, sw), (dh, dw), (r0, r1) = kernel_size, stride, dilation, rows
    n, c, _, wp = out.shape
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    r = r1 - r0
    cols = cols.reshape(n, c, kh, kw, r, wo)
    for i in range(kh):
        ys = slice(r0 * sh + i * dh, r0 * sh + i * dh + sh * (r - 1) + 1, sh)
        for j in range(kw):
            xs = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            out[:, :, ys, xs] += cols[:, :, i, j]
    return out


def _chunks(n: int, ho: int, wo: int, k: int, itemsize: int):
    """Yield (n0, n1, r0, r1): whole images while they fit CHUNK_BYTES, else row bands."""
    per_row = max(k * wo * itemsize, 1)
    per_image = per_row * ho
    if per_image <= CHUNK_BYTES:
        step = max(1, CHUNK_BYTES // max(per_image, 1))
        for n0 in range(0, n, step):
            yield n0, min(n, n0 + step), 0, ho
    else:
        band = max(1, CHUNK_BYTES // per_row)
        for n0 in range(n):
            for r0 in range(0, ho, band):
                yield n0, n0 + 1, r0, min(ho, r0 + band)


def _is_pointwise(kernel_size, stride, padding) -> bool:
    return kernel_size == (1, 1) and stride == (1, 1) and padding == (0, 0)


def _pad(x, padding):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    return xp


def _forward(x, w, out_hw, stride, padding, dilation, groups):
    """y (N, O, Ho, Wo) = conv(x, w) without bias; x and w already checked and same dtype."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = out_hw
    wg = w.reshape(groups, o // groups, cg * kh * kw)
    if _is_pointwise((kh, kw), stride, padding):
        y = np.matmul(wg, x.reshape(n, groups, cg, h * wd))
        return y.reshape(n, o, ho, wo)
    y = np.empty((n, o, ho, wo), dtype=x.dtype)
    xp = _pad(x, padding)
    k = cg * kh * kw
    buffer = None
    for n0, n1, r0, r1 in _chunks(n, ho, wo, c * kh * kw, x.itemsize):
        if buffer is None:  # the first chunk is the largest
            buffer = np.empty((n1 - n0) * c * kh * kw * (r1 - r0) * wo, dtype=x.dtype)
        cols = im2col(xp[n0:n1], (kh, kw), stride, dilation, (r0, r1), buffer)
        cols = cols.reshape(n1 - n0, groups, k, (r1 - r0) * wo)
        # The product writes straight into the output's rows r0..r1 (a strided view).
        out = y.reshape(n, groups, o // groups, ho * wo)[n0:n1, :, :, r0 * wo : r1 * wo]
        np.matmul(wg, cols, out=out)
    return y


def _input_grad(grad_y, w, x_shape, stride, padding, dilation, groups):
    """grad_x (N, C, H, W) of y = conv(x, w): columns w^T @ grad_y, then col2im."""
    n, c, h, wd = x_shape
    o, cg, kh, kw = w.shape
    _, _, ho, wo = grad_y.shape
    wt = w.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)
    if _is_pointwise((kh, kw), stride, padding):
        gx = np.matmul(wt, grad_y.reshape(n, groups, o // groups, ho * wo))
        return gx.reshape(n, c, h, wd)
    ph, pw = padding
    gxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=grad_y.dtype)
    for n0, n1, r0, r1 in _chunks(n, ho, wo, c * kh * kw, grad_y.itemsize):
        gy = grad_y[n0:n1, :, r0:r1].reshape(n1 - n0, groups, o // groups, (r1 - r0) * wo)
        cols = np.matmul(wt, gy).reshape(n1 - n0, c * kh * kw, (r1 - r0) * wo)
        col2im(cols, gxp[n0:n1], (kh, kw), stride, dilation, (r0, r1))
    if ph or pw:
        return np.ascontiguousarray(gxp[:, :, ph : ph + h, pw : pw + wd])
    return gxp


def _weight_grad(grad_y, x, w_shape, stride, padding, dilation, groups):
    """grad_w (O, C/G, kh, kw) of y = conv(x, w): sum over images of grad_y @ cols^T."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w_shape
    _, _, ho, wo = grad_y.shape
    k = cg * kh * kw
    gw = np.zeros((groups, o // groups, k), dtype=grad_y.dtype)
    if _is_pointwise((kh, kw), stride, padding):
        gy = grad_y.reshape(n, groups, o // groups, ho * wo)
        xs = x.reshape(n, groups, cg, h * wd)
        for i in range(n):
            gw += np.matmul(gy[i], xs[i].transpose(0, 2, 1))
        return gw.reshape(w_shape)
    xp = _pad(x, padding)
    buffer = None
    for n0, n1, r0, r1 in _chunks(n, ho, wo, c * kh * kw, x.itemsize):
        if buffer is None:
            buffer = np.empty((n1 - n0) * c * kh * kw * (r1 - r0) * wo, dtype=x.dtype)
        cols = im2col(xp[n0:n1], (kh, kw), stride, dilation, (r0, r1), buffer)
        cols = cols.reshape(n1 - n0, groups, k, (r1 - r0) * wo)
        gy = grad_y[n0:n1, :, r0:r1].reshape(n1 - n0, groups, o // groups, (r1 - r0) * wo)
        for i in range(n1 - n0):
            gw += np.matmul(gy[i], cols[i].transpose(0, 2, 1))
    return gw.reshape(w_shape)


# --- conv2d ----------------------------------------------------------------------------


def _check_conv(x, weight, stride, padding, dilation, groups, what):
    stride, padding, dilation = (
        _pair(stride, "stride"),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
    )
    _check_pos({"stride": stride, "padding": padding, "dilation": dilation})
    if int(groups) != groups or groups < 1:
        raise ValueError(f"groups must be a positive int; got {groups!r}")
    groups = int(groups)
    if len(weight.shape) != 4:
        raise ValueError(f"{what} weight must be 4-D; got shape {tuple(weight.shape)}")
    if len(x.shape) != 4:
        raise ValueError(f"{what} input x must be (N, C, H, W); got shape {tuple(x.shape)}")
    return stride, padding, dilation, groups


def _check_bias(bias, n_out, what):
    if bias is not None and tuple(bias.shape) != (n_out,):
        raise ValueError(
            f"{what} bias must be ({n_out},), one per output channel; got shape {tuple(bias.shape)}"
        )


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation, as torch.nn.functional.conv2d).

    x:      (N, C, H, W) float32 or float64 feature maps.
    weight: (O, C/groups, kh, kw), cast to x's dtype.
    bias:   (O,) or None.
    stride, padding (zeros), dilation: int or (h, w) pair; groups divides C and O.
    Returns (N, O, Ho, Wo), Ho = floor((H + 2 pad - dil (kh - 1) - 1) / stride) + 1.
    """
    stride, padding, dilation, groups = _check_conv(
        x, weight, stride, padding, dilation, groups, "conv2d"
    )
    o, cg, kh, kw = weight.shape
    n, c, h, w = x.shape
    _check_bias(bias, o, "conv2d")
    if c != cg * groups or o % groups:
        raise ValueError(
            f"x must be (N, C, H, W) with C = {cg * groups} for weight {tuple(weight.shape)} "
            f"and groups {groups}; got shape {tuple(x.shape)}"
        )
    ho = output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = output_size(w, kw, stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(
            f"x of size {h}x{w} (padding {padding}) is smaller than the dilated kernel "
            f"{kh}x{kw} (dilation {dilation}); the output would be empty"
        )
    fast = kernels.implementation("conv2d")
    if fast is not None:
        return fast(x, weight, bias, stride, padding, dilation, groups)
    if n == 0:
        return np.zeros((0, o, ho, wo), dtype=x.dtype)
    weight = np.asarray(weight, dtype=x.dtype)
    y = _forward(x, weight, (ho, wo), stride, padding, dilation, groups)
    if bias is not None:
        y += np.asarray(bias, dtype=x.dtype).reshape(1, o, 1, 1)
    return y


def conv2d_backward(
    grad_out,
    x,
    weight,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    input_grad=True,
    weight_grad=True,
):
    """Gradients of ``conv2d(x, weight, bias, ...)``.

    grad_out: (N, O, Ho, Wo) gradient of the loss with respect to the output.
    x, weight: the forward's input (N, C, H, W) and weight (O, C/groups, kh, kw).
    input_grad / weight_grad: False skips that product (frozen weights, first layer).
    Returns (grad_x (N, C, H, W) or None, grad_weight like weight or None, grad_bias (O,)).
    """
    stride, padding, dilation, groups = _check_conv(
        x, weight, stride, padding, dilation, groups, "conv2d"
    )
    fast = kernels.implementation("conv2d_backward")
    if fast is not None:
        return fast(grad_out, x, weight, stride, padding, dilation, groups, input_grad, weight_grad)
    weight = np.asarray(weight, dtype=grad_out.dtype)
    grad_b = grad_out.sum(axis=(0, 2, 3))
    grad_x = grad_w = None
    if input_grad:
        grad_x = _input_grad(grad_out, weight, x.shape, stride, padding, dilation, groups)
    if weight_grad:
        grad_w = _weight_grad(grad_out, x, weight.shape, stride, padding, dilation, groups)
    return grad_x, grad_w, grad_b


# --- transposed convolution: the input gradient of a convolution, run forwards ----------


def conv_transpose2d(
    x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1
):
    """Transposed convolution (torch.nn.functional.conv_transpose2d); the mask head's 2x upsampler.

    x:      (N, C, H, W).
    weight: (C, O/groups, kh, kw) -- torch's layout: input channels first.
    bias:   (O,) or None.
    Returns (N, O, Ho, Wo), Ho = (H - 1) stride - 2 padding + dil (kh - 1) + output_padding + 1.
    """
    stride, padding, dilation, groups = _check_conv(
        x, weight, stride, padding, dilation, groups, "conv_transpose2d"
    )
    output_padding = _pair(output_padding, "output_padding")
    c, og, kh, kw = weight.shape
    n, cx, h, w = x.shape
    _check_bias(bias, og * groups, "conv_transpose2d")
    if cx != c or c % groups:
        raise ValueError(
            f"x must be (N, C, H, W) with C = {c} for weight {tuple(weight.shape)}; "
            f"got shape {tuple(x.shape)}"
        )
    ho = (h - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + output_padding[0] + 1
    wo = (w - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + output_padding[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"conv_transpose2d output would be empty ({ho}x{wo})")
    o = og * groups
    weight = np.asarray(weight, dtype=x.dtype)
    if n == 0:
        return np.zeros((0, o, ho, wo), dtype=x.dtype)
    y = _input_grad(x, weight, (n, o, ho, wo), stride, padding, dilation, groups)
    if bias is not None:
        y += np.asarray(bias, dtype=x.dtype).reshape(1, o, 1, 1)
    return y


def conv_transpose2d_backward(
    grad_out,
    x,
    weight,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    input_grad=True,
    weight_grad=True,
):
    """Gradients of ``conv_transpose2d``: a plain convolution of grad_out gives grad_x.

    Returns (grad_x (N, C, H, W) or None, grad_weight (C, O/groups, kh, kw) or None,
    grad_bias (O,)).
    """
    stride, padding, dilation, groups = _check_conv(
        x, weight, stride, padding, dilation, groups, "conv_transpose2d"
    )
    weight = np.asarray(weight, dtype=grad_out.dtype)
    grad_b = grad_out.sum(axis=(0, 2, 3))
    grad_x = grad_w = None
    if input_grad:
        grad_x = _forward(grad_out, weight, x.shape[2:], stride, padding, dilation, groups)
    if weight_grad:
        grad_w = _weight_grad(x, grad_out, weight.shape, stride, padding, dilation, groups)
    return grad_x, grad_w, grad_b


# --- the layers --------------------------------------------------------------------------


class _ConvLayer(Module):
    """What Conv2d and ConvTranspose2d share: geometry, parameters, input check, gradients.

    ``transposed`` picks the weight layout: a convolution's (O, C/groups, kh, kw), or for
    a transposed one (C, O/groups, kh, kw), the layout of the convolution whose input
    gradient it computes (as torch stores it). fan_in is read from that layout either way,
    as torch does.
    """

    transposed = False

    def __init__(
        self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, rng
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        rng = init.generator(rng)
        kh, kw = _pair(kernel_size, "kernel_size")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = int(groups)
        if self.transposed:
            shape = (in_channels, out_channels // groups, kh, kw)
        else:
            shape = (out_channels, in_channels // groups, kh, kw)
        self.weight = Parameter(init.kaiming_uniform(shape, rng))
        fan_in = init.fans(shape)[0]
        self.bias = Parameter(init.uniform_bias((out_channels,), fan_in, rng)) if bias else None

    def _check_input(self, x):
        if len(x.shape) != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} input must be (N, {self.in_channels}, H, W); "
                f"got shape {tuple(x.shape)}"
            )

    def _accumulate(self, grad_weight, grad_bias):
        if grad_weight is not None:  # None when the weight is frozen
            self.weight.accumulate(grad_weight)
        if self.bias is not None:
            self.bias.accumulate(grad_bias)


class Conv2d(_ConvLayer):
    """Convolution layer; parameters ``weight`` (O, C/groups, kh, kw) and ``bias`` (O,).

    Initialised as torch does by default (uniform, bound 1/sqrt(fan_in)); the backbone
    and heads re-initialise as their papers say. ``rng``: np.random.Generator (a fresh
    unseeded one when None -- pass one for reproducible weights).
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        rng=None,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, rng
        )

    def _args(self):
        return self.stride, self.padding, self.dilation, self.groups

    def forward(self, x):
        self._check_input(x)
        self._save(x)
        bias = None if self.bias is None else self.bias.data
        return conv2d(x, self.weight.data, bias, *self._args())

    def backward(self, grad_out):
        x = self._pop()
        gx, gw, gb = conv2d_backward(
            grad_out, x, self.weight.data, *self._args(), weight_grad=self.weight.requires_grad
        )
        self._accumulate(gw, gb)
        return gx

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}"
        )


class ConvTranspose2d(_ConvLayer):
    """Transposed convolution layer; ``weight`` (C, O/groups, kh, kw), ``bias`` (O,)."""

    transposed = True

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups=1,
        bias=True,
        dilation=1,
        rng=None,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, rng
        )
        self.output_padding = _pair(output_padding, "output_padding")

    def forward(self, x):
        self._check_input(x)
        self._save(x)
        bias = None if self.bias is None else self.bias.data
        return conv_transpose2d(
            x,
            self.weight.data,
            bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation,
            self.groups,
        )

    def backward(self, grad_out):
        x = self._pop()
        gx, gw, gb = conv_transpose2d_backward(
            grad_out,
            x,
            self.weight.data,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            weight_grad=self.weight.requires_grad,
        )
        self._accumulate(gw, gb)
        return gx

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )


__all__ = [
    "CHUNK_BYTES",
    "Conv2d",
    "ConvTranspose2d",
    "col2im",
    "conv2d",
    "conv2d_backward",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "im2col",
    "output_size",
]
