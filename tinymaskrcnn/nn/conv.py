"""Convolution: im2col + one matrix product, forward and backward.

Shapes used below:
    N: images          C: input channels      O: output channels     G: groups
    H, W: input size   Ho, Wo: output size    kh, kw: kernel size    K: C/G * kh * kw
    R: output rows of one chunk

A convolution is a matrix product once every receptive field is copied out as a
column (im2col, nn/im2col.py): ``y[n, g] = w[g] (O/G, K) @ cols[n, g] (K, Ho*Wo)``. The
product runs in BLAS, which is why this is fast with no hand-written loops. The columns
are ``kh*kw`` times larger than the input, so they are built a chunk at a time (several
whole images, or a band of output rows of one image) to keep the extra memory at
``CHUNK_BYTES`` whatever the image size. 1x1 stride-1 convolutions (most of a
bottleneck) need no columns at all.

Backward is the same product transposed: ``grad_w += grad_y @ cols^T`` and
``grad_cols = w^T @ grad_y``, whose columns are added back onto the (padded) input
grid (col2im). A transposed convolution is exactly the input gradient of a
convolution, so nn/conv_transpose.py runs these three products (``_forward``,
``_input_grad``, ``_weight_grad``) with the roles of input and gradient swapped, and
shares the layers' base class ``_ConvLayer``.

Fast versions (registered in kernels/__init__.py under "nn/conv.py"): ``im2col`` and
``col2im`` under "numba" (the copies run in parallel; the product stays in BLAS, which a
Numba loop does not come near -- benchmarks/RESULTS.md); ``conv2d`` under "numba" for
3x3 stride-1 convolutions only (Winograd F(2x2, 3x3): 16 products per 2x2 outputs instead
of 36, still in BLAS); it returns None for every other geometry, which then runs here;
the whole ``conv2d`` /
``conv2d_backward`` under "cuda" (im2col and a tiled shared-memory matrix product on the
GPU, device arrays in and out). ``conv_transpose2d`` is built from the same products, so
it picks up the numba copies too. Under a backend with a fast ``conv2d``, the input
gradient of a stride-1 convolution is computed as the convolution it is
(``_input_grad_as_conv``): under "numba" the 3x3 ones then run on Winograd too.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from . import init
from .im2col import col2im, im2col
from .module import Module, Parameter, kernel_parameters

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


# --- the matrix products, a chunk of columns at a time -------------------------------


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


def _column_chunks(x, kernel_size, out_hw, stride, padding, dilation, groups):
    """Yield (n0, n1, r0, r1, cols (n1 - n0, G, K, R*Wo)): x's columns, chunk by chunk.

    Every chunk's columns are written into one buffer, sized by the first chunk (the
    largest), so each is only valid until the next one is yielded.
    """
    n, c = x.shape[:2]
    (kh, kw), (ho, wo) = kernel_size, out_hw
    xp = _pad(x, padding)
    buffer = None
    for n0, n1, r0, r1 in _chunks(n, ho, wo, c * kh * kw, x.itemsize):
        if buffer is None:
            buffer = np.empty((n1 - n0) * c * kh * kw * (r1 - r0) * wo, dtype=x.dtype)
        cols = im2col(xp[n0:n1], kernel_size, stride, dilation, (r0, r1), buffer)
        yield n0, n1, r0, r1, cols.reshape(n1 - n0, groups, c // groups * kh * kw, (r1 - r0) * wo)


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
    geometry = (stride, padding, dilation, groups)
    for n0, n1, r0, r1, cols in _column_chunks(x, (kh, kw), out_hw, *geometry):
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
    geometry = (stride, padding, dilation, groups)
    for n0, n1, r0, r1, cols in _column_chunks(x, (kh, kw), (ho, wo), *geometry):
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


def _add_bias(y, bias):
    """y (N, O, Ho, Wo) plus bias (O,) or None, in place; returns y."""
    if bias is not None:
        y += np.asarray(bias, dtype=y.dtype).reshape(1, -1, 1, 1)
    return y


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
        y = fast(x, weight, bias, stride, padding, dilation, groups)
        if y is not None:  # None: the kernel has no faster route for this geometry
            return y
    if n == 0:
        return np.zeros((0, o, ho, wo), dtype=x.dtype)
    weight = np.asarray(weight, dtype=x.dtype)
    return _add_bias(_forward(x, weight, (ho, wo), stride, padding, dilation, groups), bias)


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
    geometry = _check_conv(x, weight, stride, padding, dilation, groups, "conv2d")
    fast = kernels.implementation("conv2d_backward")
    if fast is not None:
        return fast(grad_out, x, weight, *geometry, input_grad, weight_grad)
    weight = np.asarray(weight, dtype=grad_out.dtype)
    grad_x = None
    if input_grad and kernels.implementation("conv2d") is not None:
        grad_x = _input_grad_as_conv(grad_out, weight, x.shape, *geometry)
    if input_grad and grad_x is None:
        grad_x = _input_grad(grad_out, weight, x.shape, *geometry)
    grad_w = None
    fast_w = kernels.implementation("conv2d_weight_grad")
    if weight_grad and fast_w is not None:
        grad_w = fast_w(grad_out, x, weight.shape, *geometry)
    if weight_grad and grad_w is None:
        grad_w = _weight_grad(grad_out, x, weight.shape, *geometry)
    return grad_x, grad_w, grad_out.sum(axis=(0, 2, 3))


def _input_grad_as_conv(grad_y, w, x_shape, stride, padding, dilation, groups):
    """grad_x (N, C, H, W) as a convolution, or None where that identity does not hold.

    For stride 1 (no dilation, no groups), x[c, y, x'] meets w[o, c, i, j] in the output
    y[o, y - p + i, x' - p + j] only, so grad_x is grad_y correlated with every filter
    turned by 180 degrees and its two channel axes swapped, on grad_y padded by k - 1 - p
    (Dumoulin & Visin, "A guide to convolution arithmetic", 2016, section 4). A backend
    whose conv2d beats the columns-and-col2im route (numba's Winograd for 3x3) runs it so.
    """
    (kh, kw), (ph, pw) = w.shape[2:], padding
    if stride != (1, 1) or dilation != (1, 1) or groups != 1 or kh - 1 < ph or kw - 1 < pw:
        return None
    if x_shape[0] == 0 or (kh, kw) == (1, 1):
        return None  # nothing to compute / already one matrix product
    turned = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    return conv2d(grad_y, turned, None, 1, (kh - 1 - ph, kw - 1 - pw))


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
        # The weight and bias the kernels read: under "cuda" copied to the GPU once per
        # value, not at every call (nn.module.kernel_parameters; backbone._folded keeps
        # the folded ones here).
        self.kernel_weights = kernels.DeviceCopy()

    def _args(self):
        return self.stride, self.padding, self.dilation, self.groups

    def _keep_input(self, x):
        """Check x (N, C, H, W), save it for backward; returns the bias array or None."""
        if len(x.shape) != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} input must be (N, {self.in_channels}, H, W); "
                f"got shape {tuple(x.shape)}"
            )
        self._save(x)
        return None if self.bias is None else self.bias.data

    def _accumulate(self, grad_x, grad_weight, grad_bias):
        """Add the parameters' gradients; returns grad_x."""
        if grad_weight is not None:  # None when the weight is frozen
            self.weight.accumulate(grad_weight)
        if self.bias is not None:
            self.bias.accumulate(grad_bias)
        return grad_x


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

    def forward(self, x):
        self._keep_input(x)
        return conv2d(x, *kernel_parameters(self, x.dtype), *self._args())

    def backward(self, grad_out, input_grad=True):
        """Accumulate the parameters' gradients; returns the input's, or None when
        ``input_grad`` is False (the first layer, whose input is the image)."""
        x, w = self._pop(), self.weight
        weight, _ = kernel_parameters(self, grad_out.dtype)
        grads = conv2d_backward(
            grad_out, x, weight, *self._args(), input_grad=input_grad, weight_grad=w.requires_grad
        )
        return self._accumulate(*grads)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}"
        )


__all__ = ["CHUNK_BYTES", "Conv2d", "conv2d", "conv2d_backward", "output_size"]
