"""ResNet and ResNeXt backbones: an image in, the feature maps C2..C5 out.

Shapes used below:
    N: images             H, W: (padded) image size
    C2..C5: stage outputs at strides 4, 8, 16, 32, with 256, 512, 1024, 2048 channels
            for a bottleneck ResNet (64, 128, 256, 512 for ResNet-18/34), times ``width``

ResNet (He et al., 2016) in torchvision's "v1.5" form: a bottleneck downsamples in its
3x3 convolution, not its first 1x1. ResNeXt (Xie et al., 2017) is the same bottleneck
with a grouped 3x3 convolution (32 groups of 8 channels per 64 in ResNeXt-101 32x8d),
the Mask R-CNN paper's strongest backbone (Table 2a). The stages are C1 = conv1 + max
pool (stride 4 together with layer1), C2 = layer1 ... C5 = layer4, as the FPN paper
names them.

Batch norm is frozen (ImageNet statistics, ``FrozenBatchNorm2d``) as in torchvision's
detection models; ``norm="batch"`` gives trainable ``BatchNorm2d`` for training from
scratch. ``trainable_layers`` (default 3: layer2..layer4) freezes conv1 and layer1:
they run under ``no_grad`` and backward stops above them.

Parameter names are torchvision's (``conv1.weight``, ``layer1.0.conv1.weight``,
``layer1.0.downsample.0.weight``, ``layer1.0.bn1.running_mean``, ...); the
classification head (avgpool, fc) is not built.
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import kernels, nn
from .nn import init

# name -> (block, blocks per stage, groups, width per group)
ARCHITECTURES = {
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64),
    "resnext101_32x8d": ("bottleneck", (3, 4, 23, 3), 32, 8),
}


def _norm(kind: str, channels: int, eps: float) -> nn.Module:
    return (
        nn.FrozenBatchNorm2d(channels, eps) if kind == "frozen" else nn.BatchNorm2d(channels, eps)
    )


def _folds(block: nn.Module) -> bool:
    """True when ``block`` may take the folded inference path: nothing kept, and batch
    norm a fixed affine map (frozen, or BatchNorm2d in eval mode with its running
    statistics; under no_grad in training mode it normalises with the batch's)."""
    if block._keeps():
        return False
    bn = block.bn1
    return isinstance(bn, nn.FrozenBatchNorm2d) or (
        isinstance(bn, nn.BatchNorm2d) and not bn.training
    )


def _folded(conv: nn.Conv2d, bn: nn.Module, x, relu: bool, residual=None):
    """Inference shortcut for conv -> batch norm (-> + residual) (-> ReLU).

    Batch norm in inference is a fixed affine map per channel (``bn.scale_shift``). On
    host maps the convolution runs with its own weight and one fused epilogue
    (``nn.bias_add_relu_``) applies the scale and shift, adds the shortcut and takes the
    ReLU in a single pass over the output, in place: the frozen batch norm's own
    arithmetic, with no per-forward copy of the weight. On device maps the scale is
    folded into the weight instead (weight * scale, the shift as the bias), computed and
    copied to the GPU once per value of the arrays it comes from (kernels.DeviceCopy),
    so that a forward moves no parameters. The host path gives exactly the layer-by-layer
    values (tests/test_backbone.py), the device path the same up to the folded weight's
    rounding (the torchvision parity tests run this path); used only when nothing is
    kept for backward, i.e. in eval mode or under no_grad.
    """
    dtype = np.dtype(x.dtype)
    if kernels.is_device_array(x):

        def fold():
            scale, shift = bn.scale_shift(dtype)
            return conv.weight.data.astype(dtype, copy=False) * scale.reshape(-1, 1, 1, 1), shift

        sources = [conv.weight.data, *(p.data for p in bn.parameters())]
        sources += [array for _, array in bn.named_buffers()]
        weight, shift = conv.kernel_weights.get(fold, sources, ("folded", dtype))
        scale = None  # in the weight
    else:
        weight = conv.weight.data
        scale, shift = bn.scale_shift(dtype)
    y = nn.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return nn.bias_add_relu_(y, shift, residual, relu, scale)


def _folded_shortcut(block: nn.Module, x):
    """The block's shortcut on the folded path: x itself, or its 1x1 conv + frozen BN."""
    if block.downsample is None:
        return x
    return _folded(block.downsample[0], block.downsample[1], x, relu=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample, groups, base_width, norm, eps, rng):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False, rng=rng)
        self.bn1 = _norm(norm, planes, eps)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False, rng=rng)
        self.bn2 = _norm(norm, planes, eps)
        self.downsample = downsample

    def forward(self, x):
        if _folds(self):
            out = _folded(self.conv1, self.bn1, x, relu=True)
            return _folded(self.conv2, self.bn2, out, relu=True, residual=_folded_shortcut(self, x))
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)  # out is ours: add in place
        return self.relu(out)

    def backward(self, grad_out):
        g = self.relu.backward(grad_out)
        g_identity = g if self.downsample is None else self.downsample.backward(g)
        g = self.conv2.backward(self.bn2.backward(g))
        g = self.relu.backward(g)
        return self.conv1.backward(self.bn1.backward(g)) + g_identity


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride and groups here: v1.5), 1x1 expand by 4, plus a shortcut."""

    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample, groups, base_width, norm, eps, rng):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        if width < 1:
            raise ValueError(
                f"a bottleneck of {planes} planes with {groups} groups of {base_width}/64 "
                "has no channels: raise the width multiplier"
            )
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False, rng=rng)
        self.bn1 = _norm(norm, width, eps)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False, rng=rng)
        self.bn2 = _norm(norm, width, eps)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False, rng=rng)
        self.bn3 = _norm(norm, planes * 4, eps)
        self.relu = nn.ReLU()  # one module, three calls: its stack pops them in reverse
        self.downsample = downsample

    def forward(self, x):
        if _folds(self):
            out = _folded(self.conv1, self.bn1, x, relu=True)
            out = _folded(self.conv2, self.bn2, out, relu=True)
            return _folded(self.conv3, self.bn3, out, relu=True, residual=_folded_shortcut(self, x))
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)  # out is ours: add in place
        return self.relu(out)

    def backward(self, grad_out):
        g = self.relu.backward(grad_out)
        g_identity = g if self.downsample is None else self.downsample.backward(g)
        g = self.relu.backward(self.conv3.backward(self.bn3.backward(g)))
        g = self.relu.backward(self.conv2.backward(self.bn2.backward(g)))
        return self.conv1.backward(self.bn1.backward(g)) + g_identity


class ResNet(nn.Module):
    """The body of a detector: image (N, 3, H, W) -> [C2, C3, C4, C5].

    arch: one of ARCHITECTURES ("resnet50", "resnext101_32x8d", ...).
    width: multiplier on every stage's channels (0.25 gives a small model for tests and
        the shapes dataset; 1.0 is the published network).
    trainable_layers: 0..5 stages trained, counted from layer4 down (5 adds conv1).
    norm: "frozen" (FrozenBatchNorm2d, eps ``frozen_bn_eps``) or "batch" (BatchNorm2d).
    rng: np.random.Generator for the initial weights (kaiming normal, fan_out, as torchvision).
    """

    def __init__(
        self,
        arch="resnet50",
        width=1.0,
        trainable_layers=3,
        norm="frozen",
        frozen_bn_eps=1e-5,
        rng=None,
    ):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}; got {arch!r}")
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"trainable_layers must be in 0..5; got {trainable_layers}")
        if norm not in ("frozen", "batch"):
            raise ValueError(f"norm must be 'frozen' or 'batch'; got {norm!r}")
        if width <= 0:
            raise ValueError(f"width must be positive; got {width}")
        rng = init.generator(rng)
        kind, blocks, groups, base_width = ARCHITECTURES[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.arch, self.trainable_layers = arch, int(trainable_layers)
        base = max(1, int(round(64 * width)))
        self.inplanes = base
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False, rng=rng)
        self.bn1 = _norm(norm, base, frozen_bn_eps)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.out_channels = []
        for i, n_blocks in enumerate(blocks):
            planes = base * 2**i
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(n_blocks):
                downsample = None
                if b == 0 and (stride != 1 or self.inplanes != planes * block.expansion):
                    downsample = nn.Sequential(
                        nn.Conv2d(
                            self.inplanes, planes * block.expansion, 1, stride, bias=False, rng=rng
                        ),
                        _norm(norm, planes * block.expansion, frozen_bn_eps),
                    )
                layers.append(
                    block(
                        self.inplanes,
                        planes,
                        stride if b == 0 else 1,
                        downsample,
                        groups,
                        base_width,
                        norm,
                        frozen_bn_eps,
                        rng,
                    )
                )
                self.inplanes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            self.out_channels.append(self.inplanes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = init.kaiming_normal(module.weight.shape, rng, mode="fan_out")
        # torchvision's resnet_fpn_backbone: train layer4, layer3, ... down to conv1 (+ bn1).
        trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][: self.trainable_layers]
        if self.trainable_layers == 5:
            trained.append("bn1")
        for name, p in self.named_parameters():
            p.requires_grad = any(name.startswith(t) for t in trained)

    def folds(self) -> bool:
        """True when forward takes the folded inference path: nothing kept for backward
        (eval mode or no_grad) and batch norm a fixed affine map (frozen, or in eval mode)."""
        return _folds(self)

    def _stages(self):
        return [self._stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def _stem(self, x):
        if _folds(self):
            return self.maxpool(_folded(self.conv1, self.bn1, x, relu=True))
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x):
        """x: (N, 3, H, W) float32 normalised image -> [C2, C3, C4, C5], strides 4..32."""
        if len(x.shape) != 4 or x.shape[1] != 3:
            raise ValueError(
                f"ResNet input must be (N, 3, H, W) images; got shape {tuple(x.shape)}"
            )
        if not kernels.is_device_array(x) and not np.isfinite(x).all():
            raise ValueError("ResNet input contains NaN or infinite values")
        # Frozen stages run under no_grad: nothing kept, and backward stops above them.
        first_trained = 5 - self.trainable_layers
        features = []
        for i, stage in enumerate(self._stages()):
            with _no_grad_if(i < first_trained):
                x = stage(x)
            if i > 0:
                features.append(x)
        return features

    def backward(self, grads, image_grad=True):
        """grads: gradients of [C2, C3, C4, C5] (None for an unused one).

        Accumulates .grad of the trainable parameters. Returns the gradient of the
        image (N, 3, H, W), or None when conv1 is frozen (it is never needed then) or
        ``image_grad`` is False (training: torch, too, leaves out the gradient of an
        input that does not require one, conv1's largest product).
        """
        if len(grads) != 4:
            raise ValueError(f"ResNet.backward needs 4 gradients (C2..C5); got {len(grads)}")
        first_trained = 5 - self.trainable_layers
        g = None
        for i in range(4, 0, -1):  # layer i outputs C(i+1), whose gradient is grads[i - 1]
            if grads[i - 1] is not None:
                g = grads[i - 1] if g is None else g + grads[i - 1]
            if i < first_trained or g is None:
                return None
            g = self._stages()[i].backward(g)
        if first_trained > 0:
            return None
        g = self.maxpool.backward(g)
        return self.conv1.backward(self.bn1.backward(self.relu.backward(g)), image_grad)


def _no_grad_if(flag: bool):
    """``nn.no_grad()`` when ``flag``, else a block that changes nothing."""
    return nn.no_grad() if flag else contextlib.nullcontext()
