"""Feature Pyramid Network (Lin et al., 2017): C2..C5 in, P2..P6 out, all with 256 channels.

Shapes used below:
    N: images    L: input levels (4: C2..C5)    Cl: channels of input level l
    Hl, Wl: size of level l (stride 2**(l+2))   D: output channels (256)

Each level gets a 1x1 "lateral" convolution to D channels (``inner_blocks``). Going
top-down from the coarsest level, the running map is upsampled by nearest neighbour to
the next finer lateral's size and added to it (the top-down pathway, FPN §3); a 3x3
convolution (``layer_blocks``) then smooths each sum into P_l. P6 is a max pool with
kernel 1 and stride 2 of P5 -- a plain subsampling -- used only by the RPN for its
largest anchors (torchvision's ``LastLevelMaxPool``).

Upsampling "to the lateral's size" rather than by exactly 2 lets odd image sizes work:
a 25-row C3 lateral gets its rows from a 13-row C4 map by torch's nearest rule.

Names are torchvision's: ``inner_blocks.0.0.weight`` (a one-conv Sequential); the older
generation's ``inner_blocks.0.weight`` is accepted by load_state_dict.
"""

from __future__ import annotations

import numpy as np

from . import kernels, nn
from .backbone import ResNet
from .nn import init
from .nn.layers import max_pool2d, max_pool2d_backward, upsample_nearest, upsample_nearest_backward


def add_top_down(lateral, coarse):
    """lateral += upsample_nearest(coarse, lateral's size), in place; returns lateral.

    lateral: (N, D, h, w), fresh from its 1x1 conv (nothing else holds it).
    coarse:  (N, D, h', w'), the running sum of the level above.
    """
    fast = kernels.implementation("add_top_down")
    if fast is not None and fast(lateral, coarse) is not None:
        return lateral  # None: no kernel for this array (a CUDA kernel takes device arrays)
    n, d, h, w = lateral.shape
    hc, wc = coarse.shape[2:]
    if (h, w) == (2 * hc, 2 * wc) and lateral.flags.c_contiguous:
        # The model's padded sizes: each coarse cell covers a 2x2 block, so the sum is one
        # broadcast add into a (.., h', 2, w', 2) view, with no upsampled copy.
        lateral.reshape(n, d, hc, 2, wc, 2)[...] += coarse[:, :, :, None, :, None]
    else:
        lateral += upsample_nearest(coarse, (h, w))
    return lateral


class LastLevelMaxPool(nn.Module):
    """P6 = max_pool2d(P5, kernel 1, stride 2): every other row and column of P5."""

    def forward(self, p5):
        if not self._keeps():
            return max_pool2d(p5, 1, 2, 0, argmax=False)
        p6, argmax = max_pool2d(p5, 1, 2, 0)
        self._save(argmax, p5.shape)
        return p6

    def backward(self, grad_p6):
        argmax, shape = self._pop()
        return max_pool2d_backward(grad_p6, argmax, shape)


class FeaturePyramidNetwork(nn.Module):
    """[C2..C5] -> [P2, P3, P4, P5, P6].

    in_channels_list: channels of each input level, finest first (e.g. 256..2048).
    out_channels: D, channels of every output (256).
    rng: np.random.Generator for the weights (kaiming uniform a=1, biases 0, as torchvision).
    """

    def __init__(self, in_channels_list, out_channels=256, rng=None):
        super().__init__()
        rng = init.generator(rng)
        self.in_channels_list = [int(c) for c in in_channels_list]
        self.out_channels = int(out_channels)
        self.inner_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, 1, rng=rng)) for c in self.in_channels_list
        )
        self.layer_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1, rng=rng))
            for _ in self.in_channels_list
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = init.kaiming_uniform(module.weight.shape, rng, a=1.0)
                module.bias.data = init.constant(module.bias.shape, 0.0)
        self.extra_blocks = LastLevelMaxPool()

    def forward(self, features):
        """features: [C2..C5], (N, Cl, Hl, Wl) finest first -> [P2..P6], (N, D, Hl, Wl)."""
        if len(features) != len(self.in_channels_list):
            raise ValueError(
                f"FPN needs {len(self.in_channels_list)} feature maps; got {len(features)}"
            )
        for level, (c, x) in enumerate(zip(self.in_channels_list, features, strict=True)):
            if len(x.shape) != 4 or x.shape[1] != c:
                raise ValueError(
                    f"FPN input level {level} must be (N, {c}, H, W); got shape {tuple(x.shape)}"
                )
        last_inner = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last_inner)]
        sizes = [last_inner.shape[2:]]
        for idx in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[idx](features[idx])
            last_inner = add_top_down(lateral, last_inner)
            results.insert(0, self.layer_blocks[idx](last_inner))
            sizes.insert(0, last_inner.shape[2:])
        results.append(self.extra_blocks(results[-1]))
        self._save([(r.shape, r.dtype) for r in results], sizes)
        return results

    def backward(self, grads):
        """grads: gradients of [P2..P6] (None for an unused level) -> gradients of [C2..C5]."""
        shapes, sizes = self._pop()
        levels = len(self.in_channels_list)
        if len(grads) != levels + 1:
            raise ValueError(
                f"FPN.backward needs {levels + 1} gradients (P2..P6); got {len(grads)}"
            )
        grads = [np.zeros(*s) if g is None else g for g, s in zip(grads, shapes, strict=True)]
        g_p5 = grads[levels - 1] + self.extra_blocks.backward(grads[levels])
        grads = grads[: levels - 1] + [g_p5]
        grad_features = []
        g_finer = None  # gradient of the finer level's running sum, part of which is ours
        for idx in range(levels):
            g = self.layer_blocks[idx].backward(grads[idx])
            if g_finer is not None:
                g = g + upsample_nearest_backward(g_finer, sizes[idx])
            grad_features.append(self.inner_blocks[idx].backward(g))
            g_finer = g
        return grad_features


class BackboneWithFPN(nn.Module):
    """``body`` (ResNet -> C2..C5) then ``fpn`` (-> P2..P6): torchvision's BackboneWithFPN.

    ``out_channels`` is D (256) for the heads that follow.
    """

    def __init__(self, body: ResNet, out_channels=256, rng=None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, out_channels, rng=rng)
        self.out_channels = int(out_channels)

    def forward(self, x, trace=None):
        """x: (N, 3, H, W) float32 normalised images -> [P2..P6] (N, D, H/4.., W/4..).

        trace: as MaskRCNN.forward's; receives "backbone" (C2..C5) and "fpn" (P2..P6).
        """
        trace = trace or (lambda stage, **arrays: None)
        c = self.body(x)
        trace("backbone", features=c)
        p = self.fpn(c)
        trace("fpn", features=p)
        return p

    def backward(self, grads, image_grad=True):
        """grads of [P2..P6] -> gradient of the image, or None when conv1 is frozen or
        ``image_grad`` is False (ResNet.backward)."""
        return self.body.backward(self.fpn.backward(grads), image_grad)


def resnet_fpn_backbone(
    arch="resnet50",
    width=1.0,
    trainable_layers=3,
    out_channels=256,
    norm="frozen",
    frozen_bn_eps=1e-5,
    rng=None,
) -> BackboneWithFPN:
    """ResNet or ResNeXt + FPN as torchvision's ``resnet_fpn_backbone`` builds it.

    arch: "resnet18" | "resnet34" | "resnet50" | "resnet101" | "resnext101_32x8d".
    The remaining arguments are ResNet's and the FPN's (see there).
    """
    rng = init.generator(rng)
    body = ResNet(
        arch,
        width=width,
        trainable_layers=trainable_layers,
        norm=norm,
        frozen_bn_eps=frozen_bn_eps,
        rng=rng,
    )
    return BackboneWithFPN(body, out_channels, rng=rng)
