"""The other layers: linear, ReLU, the sigmoid and softmax every stage shares, max
pooling, nearest upsampling, bilinear resizing, batch norms.

Shapes used below:
    N: images (or RoIs)   C: channels   H, W: input size   Ho, Wo: output size
    F_in, F_out: features of a linear layer

Each layer's forward and backward sit side by side. The functional forms
(``max_pool2d``, ``upsample_nearest``) come with an explicit ``*_backward`` that the
FPN uses directly.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from . import init
from .conv import _pair, output_size
from .module import Module, Parameter, kernel_parameters


def _check_nchw(x, name: str, channels: int | None = None) -> None:
    if len(x.shape) != 4 or (channels is not None and x.shape[1] != channels):
        form = f"(N, {channels}, H, W)" if channels is not None else "(N, C, H, W)"
        raise ValueError(f"{name} input must be {form}; got shape {tuple(x.shape)}")


# --- Linear ----------------------------------------------------------------------------


class Linear(Module):
    """y = x @ weight.T + bias; ``weight`` (F_out, F_in), ``bias`` (F_out,), torch's init."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        rng = init.generator(rng)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(init.kaiming_uniform((out_features, in_features), rng))
        self.bias = (
            Parameter(init.uniform_bias((out_features,), in_features, rng)) if bias else None
        )
        self.kernel_weights = kernels.DeviceCopy()  # see nn.module.kernel_parameters

    def forward(self, x):
        """x: (N, F_in) -> (N, F_out)."""
        if len(x.shape) != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"Linear input must be (N, {self.in_features}); got shape {tuple(x.shape)}"
            )
        self._save(x)
        fast = kernels.implementation("linear")
        if fast is not None and kernels.is_device_array(x):  # the heads' inference on a GPU
            return fast(x, *kernel_parameters(self, x.dtype))
        y = x @ self.weight.data.T.astype(x.dtype, copy=False)
        if self.bias is not None:
            y += self.bias.data.astype(x.dtype, copy=False)
        return y

    def backward(self, grad_out):
        x = self._pop()
        if self.weight.requires_grad:
            self.weight.accumulate(grad_out.T @ x)
        if self.bias is not None:
            self.bias.accumulate(grad_out.sum(axis=0))
        return grad_out @ self.weight.data.astype(grad_out.dtype, copy=False)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"


# --- ReLU ------------------------------------------------------------------------------


class ReLU(Module):
    """max(x, 0); the gradient passes where x > 0 (0 at x == 0, as torch)."""

    def forward(self, x):
        if not self._keeps():
            fast = kernels.implementation("relu")
            y = None if fast is None else fast(x)
            return np.maximum(x, 0) if y is None else y
        fast = kernels.implementation("relu_with_mask")
        pair = None if fast is None else fast(x)
        if pair is None:
            mask = x > 0
            pair = (x * mask, mask)
        y, mask = pair
        self._save(mask)
        return y

    def backward(self, grad_out):
        mask = self._pop()
        fast = kernels.implementation("relu_backward")
        grad = None if fast is None else fast(grad_out, mask)
        return grad_out * mask if grad is None else grad


# --- sigmoid and softmax (one stable version each, used by every stage) ------------------


def sigmoid(x):
    """1 / (1 + exp(-x)) elementwise, in x's dtype, for any x without overflow.

    Split by sign so that exp only ever sees -|x|: exp(-x) for very negative x would
    overflow to inf (and warn) where the answer is simply 0.
    """
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def log_softmax(x, axis):
    """log(softmax(x)) along ``axis``, shifted by the max so no exp overflows."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(x, axis):
    """exp(x) / sum(exp(x)) along ``axis``, computed as exp(log_softmax): stable."""
    return np.exp(log_softmax(x, axis))


# --- max pooling -----------------------------------------------------------------------


def max_pool2d(x, kernel_size, stride=None, padding=0, argmax=True):
    """Max over each window (torch.nn.functional.max_pool2d, floor mode, no dilation).

    x: (N, C, H, W). Padding counts as -inf (never wins). stride defaults to kernel_size.
    Returns (y (N, C, Ho, Wo), argmax (N, C, Ho, Wo) int64): the flat index
    ``row * W + col`` of the winning input cell, the first one on ties (torch's rule).
    With ``argmax=False`` returns y alone (inference).
    """
    _check_nchw(x, "max_pool2d")
    (kh, kw) = _pair(kernel_size, "kernel_size")
    (sh, sw) = _pair(kernel_size if stride is None else stride, "stride")
    (ph, pw) = _pair(padding, "padding")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"padding {ph, pw} must be at most half the kernel {kh, kw}")
    n, c, h, w = x.shape
    ho, wo = output_size(h, kh, sh, ph, 1), output_size(w, kw, sw, pw, 1)
    if ho < 1 or wo < 1:
        raise ValueError(f"max_pool2d input {h}x{w} is smaller than the kernel {kh}x{kw}")
    fast = kernels.implementation("max_pool2d")
    if fast is not None:
        out = fast(x, (kh, kw), (sh, sw), (ph, pw), (ho, wo), argmax)
        if out is not None:  # None: no kernel for this array
            return out
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    if not argmax:
        best = xp[:, :, 0 : sh * (ho - 1) + 1 : sh, 0 : sw * (wo - 1) + 1 : sw].copy()
        for i in range(kh):
            for j in range(kw):
                window = xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                np.maximum(best, window, out=best)
        return best
    best = np.full((n, c, ho, wo), -np.inf, dtype=x.dtype)
    winner = np.zeros((n, c, ho, wo), dtype=np.int64)
    rows = np.arange(ho) * sh - ph
    cols = np.arange(wo) * sw - pw
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            # Strictly greater keeps the first maximum in scan order, as torch does.
            better = window > best
            best = np.where(better, window, best)
            flat = (rows[:, None] + i) * w + (cols[None, :] + j)
            winner = np.where(better, flat, winner)
    return best, winner


def max_pool2d_backward(grad_out, argmax, input_shape):
    """Gradient of max_pool2d: each output's gradient goes to its winning input cell.

    grad_out, argmax: (N, C, Ho, Wo). input_shape: (N, C, H, W). Returns (N, C, H, W).
    """
    n, c, h, w = input_shape
    grad = np.zeros((n * c, h * w), dtype=grad_out.dtype)
    flat = argmax.reshape(n * c, -1) + (np.arange(n * c) * (h * w))[:, None]
    # Overlapping windows (3x3 stride 2) can pick the same cell: add, never overwrite.
    np.add.at(grad.reshape(-1), flat.reshape(-1), grad_out.reshape(-1))
    return grad.reshape(n, c, h, w)


class MaxPool2d(Module):
    """Max pooling layer (ResNet's stem: kernel 3, stride 2, padding 1)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding = _pair(padding, "padding")

    def forward(self, x):
        if not self._keeps():  # inference: the maximum alone, no argmax bookkeeping
            return max_pool2d(x, self.kernel_size, self.stride, self.padding, argmax=False)
        y, argmax = max_pool2d(x, self.kernel_size, self.stride, self.padding)
        self._save(argmax, x.shape)
        return y

    def backward(self, grad_out):
        argmax, shape = self._pop()
        return max_pool2d_backward(grad_out, argmax, shape)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


# --- nearest upsampling (the FPN's top-down pathway) -----------------------------------


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output position: floor(i * in / out), clamped.

    The scale is computed in float32 and multiplied in float32, exactly as torch's
    ``interpolate(mode="nearest", size=...)`` does, so odd sizes pick the same rows.
    """
    if out_size == in_size:
        return np.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def upsample_nearest(x, size):
    """Resize (N, C, H, W) to (N, C, Ho, Wo) = size by nearest neighbour (torch's "nearest")."""
    _check_nchw(x, "upsample_nearest")
    ho, wo = _pair(size, "size")
    rows = nearest_indices(x.shape[2], ho)
    cols = nearest_indices(x.shape[3], wo)
    return x[:, :, rows[:, None], cols[None, :]]


def upsample_nearest_backward(grad_out, input_hw):
    """Gradient of upsample_nearest: each input cell sums the gradients of its copies.

    grad_out: (N, C, Ho, Wo). input_hw: (H, W). Returns (N, C, H, W).
    """
    n, c, ho, wo = grad_out.shape
    h, w = input_hw
    if (ho, wo) == (2 * h, 2 * w):  # exact 2x: each input cell has a 2x2 block of copies
        # The block's two columns first, then its two rows: the order of
        # ``reshape(n, c, h, 2, w, 2).sum(axis=(3, 5))``, in four strided slices instead of
        # a reduction over two length-2 axes (ten times slower on the FPN's maps).
        pairs = grad_out[..., 0::2] + grad_out[..., 1::2]
        return pairs[:, :, 0::2] + pairs[:, :, 1::2]
    # One-hot maps (Ho, H), (Wo, W): two small matrix products do the scatter-add.
    rows = np.zeros((ho, h), dtype=grad_out.dtype)
    rows[np.arange(ho), nearest_indices(h, ho)] = 1
    cols = np.zeros((wo, w), dtype=grad_out.dtype)
    cols[np.arange(wo), nearest_indices(w, wo)] = 1
    return rows.T @ grad_out @ cols


# --- bilinear resizing (the transform's images, pasted masks) --------------------------


def _linear_taps(in_size: int, out_size: int, dtype):
    # Half-pixel centres (align_corners=False): output pixel o looks at input
    # coordinate (o + 0.5) * in/out - 0.5, clamped at 0; the right tap stops at the
    # last pixel. torch computes the scale from the integer sizes (recompute_scale_factor)
    # and in the image's precision; so do we, so that weights agree to the last bit.
    scale = dtype(in_size) / dtype(out_size)
    src = (np.arange(out_size, dtype=dtype) + dtype(0.5)) * scale - dtype(0.5)
    src = np.maximum(src, dtype(0))
    low = np.minimum(src.astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = np.clip(src - low.astype(dtype), 0, 1).astype(dtype)
    return low, high, frac


def resize_bilinear(image, size) -> np.ndarray:
    """Bilinear resize of (C, H, W) to (C, h, w) with half-pixel centres, no antialiasing.

    Equals ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.
    image: (C, H, W) float; size: (h, w). Returns (C, h, w), float64 for float64 input,
    else float32.
    """
    out_h, out_w = size
    dtype = image.dtype.type if image.dtype == np.float64 else np.float32
    y0, y1, fy = _linear_taps(image.shape[1], out_h, dtype)
    x0, x1, fx = _linear_taps(image.shape[2], out_w, dtype)
    fy = fy[:, None]
    fx = fx[None, :]
    rows = image[:, y0] * (1 - fy) + image[:, y1] * fy
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


# --- the fused inference epilogue ------------------------------------------------------


def bias_add_relu_(y, bias, residual=None, relu=True, scale=None):
    """In place on ``y``: y *= scale, += bias (per channel), += residual, then max(y, 0).

    y:        (N, C, H, W) a fresh output this call may overwrite (a convolution's).
    bias:     (C,) or (1, C, 1, 1).
    residual: (N, C, H, W) or None (a ResNet block's shortcut).
    scale:    (C,) or (1, C, 1, 1), or None for none (1).
    Returns y. The inference path of the backbone ends every convolution followed by a
    fixed batch norm with this (the batch norm's scale and shift, the block's shortcut,
    its ReLU), so the big feature maps are read and written once instead of three to
    five times. y * scale, then + bias: FrozenBatchNorm2d's own two roundings.
    """
    fast = kernels.implementation("bias_add_relu_")
    if fast is not None and fast(y, bias, residual, relu, scale) is not None:
        return y  # None: no kernel for this array (a CUDA kernel takes device arrays only)
    if scale is not None:
        y *= np.asarray(scale, dtype=y.dtype).reshape(1, -1, 1, 1)
    y += np.asarray(bias, dtype=y.dtype).reshape(1, -1, 1, 1)
    if residual is not None:
        y += residual
    if relu:
        np.maximum(y, 0, out=y)
    return y


# --- batch norm ------------------------------------------------------------------------


class FrozenBatchNorm2d(Module):
    """y = (x - running_mean) * weight / sqrt(running_var + eps) + bias, statistics fixed.

    Detection fine-tunes with batches of 2 images, too few for batch statistics, so the
    ImageNet ones are frozen (torchvision's FrozenBatchNorm2d). All four arrays are
    buffers: saved and loaded, never trained. eps is 1e-5 by default; torchvision's COCO
    Mask R-CNN v1 weights were trained with 0.0 (docs/architecture.md, Weights and state dicts).
    """

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.num_features, self.eps = int(num_features), float(eps)
        self.register_buffer("weight", np.ones(num_features, np.float32))
        self.register_buffer("bias", np.zeros(num_features, np.float32))
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))
        self.register_buffer("running_var", np.ones(num_features, np.float32))

    def scale_shift(self, dtype):
        """(scale, shift), each (1, C, 1, 1) of ``dtype``: y = x * scale + shift."""
        # In the buffers' float32 as torchvision does, then one multiply-add per element.
        scale = self.weight / np.sqrt(self.running_var + np.float32(self.eps))
        shift = self.bias - self.running_mean * scale
        return scale.astype(dtype).reshape(1, -1, 1, 1), shift.astype(dtype).reshape(1, -1, 1, 1)

    def forward(self, x):
        _check_nchw(x, "FrozenBatchNorm2d", self.num_features)
        scale, shift = self.scale_shift(x.dtype)
        self._save(scale)
        y = x * scale
        y += shift
        return y

    def backward(self, grad_out):
        return grad_out * self._pop()

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def pooled_statistics(statistics) -> tuple:
    """(count, mean (C,), biased variance (C,)) of a batch from its parts' (one such triple
    each): the mean weighted by count, and the mean of the parts' variances plus the spread
    of their means about it (Chan, Golub & LeVeque's pairwise update, 1979). Computed in
    float64, so float32 parts lose nothing to the sums."""
    count = sum(n for n, _, _ in statistics)
    mean = sum(n * m.astype(np.float64) for n, m, _ in statistics) / count
    var = sum(n * (v + (m.astype(np.float64) - mean) ** 2) for n, m, v in statistics) / count
    return count, mean, var


class BatchNorm2d(Module):
    """Batch norm (Ioffe & Szegedy, 2015) for training from scratch.

    Training: normalise with the batch's mean and (biased) variance over N, H, W and
    update ``running_mean``/``running_var`` (unbiased) with ``momentum``, as torch.
    Eval: use the running statistics. ``weight``/``bias`` are Parameters (C,).
    ``batch_statistics``: (count, mean (C,), biased variance (C,)) of the last training
    batch, from which data-parallel training (distributed.py) rebuilds the whole batch's.

    ``all_gather``: None, or (data-parallel training with synchronised batch norm, as
    torch's SyncBatchNorm) a callable that sends this worker's value to every worker and
    returns all of theirs in worker order. Then the batch is the union of the workers'
    shares: forward pools their (count, mean, variance) into the whole batch's
    (``pooled_statistics``) and backward sums the two per-channel sums its gradient needs
    over the workers, so that N workers compute what one process would on the whole batch.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.weight = Parameter(np.ones(num_features, np.float32))
        self.bias = Parameter(np.zeros(num_features, np.float32))
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))
        self.register_buffer("running_var", np.ones(num_features, np.float32))
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        self.batch_statistics = None
        self.all_gather = None

    def forward(self, x):
        _check_nchw(x, "BatchNorm2d", self.num_features)
        w = self.weight.data.astype(x.dtype).reshape(1, -1, 1, 1)
        b = self.bias.data.astype(x.dtype).reshape(1, -1, 1, 1)
        if not self.training:
            inv = 1.0 / np.sqrt(self.running_var.astype(x.dtype) + self.eps)
            xhat = (x - self.running_mean.astype(x.dtype).reshape(1, -1, 1, 1)) * inv.reshape(
                1, -1, 1, 1
            )
            return xhat * w + b
        count = x.shape[0] * x.shape[2] * x.shape[3]
        if count < 2:
            raise ValueError(
                f"BatchNorm2d in training mode needs more than one value per channel; "
                f"got input shape {tuple(x.shape)}"
            )
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        if self.all_gather is not None:
            count, mean, var = pooled_statistics(self.all_gather((count, mean, var)))
            mean, var = mean.astype(x.dtype), var.astype(x.dtype)
        self.batch_statistics = (count, mean, var)
        inv = 1.0 / np.sqrt(var + self.eps)
        xhat = (x - mean.reshape(1, -1, 1, 1)) * inv.reshape(1, -1, 1, 1)
        self.update_running_statistics(count, mean, var)
        self._save(xhat, inv, count)
        return xhat * w + b

    def scale_shift(self, dtype):
        """(scale, shift), each (1, C, 1, 1) of ``dtype``: eval mode's y = x * scale + shift,
        from the running statistics (a fixed affine map, as FrozenBatchNorm2d's)."""
        inv = 1.0 / np.sqrt(self.running_var.astype(dtype) + self.eps)
        scale = self.weight.data.astype(dtype) * inv
        shift = self.bias.data.astype(dtype) - self.running_mean.astype(dtype) * scale
        return scale.reshape(1, -1, 1, 1), shift.reshape(1, -1, 1, 1)

    def update_running_statistics(self, count, mean, var):
        """running = (1 - momentum) running + momentum * the batch's, the variance made
        unbiased (count / (count - 1)), as torch; mean, var (C,) biased, over count values."""
        m = self.momentum
        self.running_mean = ((1 - m) * self.running_mean + m * mean).astype(self.running_mean.dtype)
        unbiased = var * count / (count - 1)
        self.running_var = ((1 - m) * self.running_var + m * unbiased).astype(
            self.running_var.dtype
        )
        self.num_batches_tracked = self.num_batches_tracked + 1

    def backward(self, grad_out):
        xhat, inv, count = self._pop()
        if self.weight.requires_grad:
            self.weight.accumulate((grad_out * xhat).sum(axis=(0, 2, 3)))
        if self.bias.requires_grad:
            self.bias.accumulate(grad_out.sum(axis=(0, 2, 3)))
        # d/dx of (x - mean) / std with mean and std taken from the same batch.
        g = grad_out * self.weight.data.astype(grad_out.dtype).reshape(1, -1, 1, 1)
        if self.all_gather is None:
            g_mean = g.mean(axis=(0, 2, 3), keepdims=True)
            gx_mean = (g * xhat).mean(axis=(0, 2, 3), keepdims=True)
        else:  # the means over the whole batch: every worker's values moved its mean and std
            sums = np.stack([g.sum(axis=(0, 2, 3)), (g * xhat).sum(axis=(0, 2, 3))])
            g_mean, gx_mean = (sum(self.all_gather(sums)) / count).reshape(2, 1, -1, 1, 1)
        return (g - g_mean - xhat * gx_mean) * inv.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


__all__ = [
    "bias_add_relu_",
    "BatchNorm2d",
    "FrozenBatchNorm2d",
    "Linear",
    "MaxPool2d",
    "ReLU",
    "max_pool2d",
    "max_pool2d_backward",
    "nearest_indices",
    "pooled_statistics",
    "upsample_nearest",
    "upsample_nearest_backward",
]
