"""Transposed convolution: the input gradient of a convolution, run forwards.

Shapes used below:
    N: images          C: input channels      O: output channels     G: groups
    H, W: input size   Ho, Wo: output size    kh, kw: kernel size

The weight (C, O/G, kh, kw) is that of a convolution from O channels to C (torch's
layout), and the transposed convolution computes that convolution's input gradient
with x in the place of the output gradient. So its forward is nn/conv.py's
``_input_grad`` (columns w^T @ x, then col2im onto the Ho x Wo grid), its input
gradient is a plain convolution of grad_out (``_forward``) and its weight gradient is
``_weight_grad`` with input and gradient swapped. The mask head's 2x upsampler is the one
user. Its backward picks up the numba im2col and col2im through those products; its
forward has a numba kernel for blocks that do not overlap (stride = kernel, as the mask
head's 2 x 2 / 2), which writes the same product's columns in place with the bias
instead of adding them into zeros (kernels/numba_conv.py).
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .conv import (
    _add_bias,
    _check_bias,
    _check_conv,
    _ConvLayer,
    _forward,
    _input_grad,
    _pair,
    _weight_grad,
)
from .module import kernel_parameters


def conv_transpose2d(
    x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1
):
    """Transposed convolution (torch.nn.functional.conv_transpose2d).

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
    fast = kernels.implementation("conv_transpose2d")
    if fast is not None:
        y = fast(x, weight, bias, stride, padding, (ho, wo), dilation, groups)
        if y is not None:  # None: no kernel for this x (see the kernels), the reference runs
            return y
    weight = np.asarray(weight, dtype=x.dtype)
    if n == 0:
        return np.zeros((0, o, ho, wo), dtype=x.dtype)
    y = _input_grad(x, weight, (n, o, ho, wo), stride, padding, dilation, groups)
    return _add_bias(y, bias)


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

    grad_out: (N, O, Ho, Wo); x, weight: the forward's input and weight.
    input_grad / weight_grad: False skips that product, as in ``conv2d_backward``.
    Returns (grad_x (N, C, H, W) or None, grad_weight (C, O/groups, kh, kw) or None,
    grad_bias (O,)).
    """
    geometry = _check_conv(x, weight, stride, padding, dilation, groups, "conv_transpose2d")
    weight = np.asarray(weight, dtype=grad_out.dtype)
    grad_x = _forward(grad_out, weight, x.shape[2:], *geometry) if input_grad else None
    grad_w = _weight_grad(x, grad_out, weight.shape, *geometry) if weight_grad else None
    return grad_x, grad_w, grad_out.sum(axis=(0, 2, 3))


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
        bias, weight = self._keep_input(x), self.weight.data
        if kernels.is_device_array(x):  # the mask head's inference on a GPU
            weight, bias = kernel_parameters(self, x.dtype)
        stride, padding, dilation, groups = self._args()
        return conv_transpose2d(
            x, weight, bias, stride, padding, self.output_padding, dilation, groups
        )

    def backward(self, grad_out):
        x, w = self._pop(), self.weight
        grads = conv_transpose2d_backward(
            grad_out, x, w.data, *self._args(), weight_grad=w.requires_grad
        )
        return self._accumulate(*grads)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )


__all__ = ["ConvTranspose2d", "conv_transpose2d", "conv_transpose2d_backward"]
