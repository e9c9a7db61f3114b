"""torchvision's ``MaskRCNN`` built to the shape of one of our configs, for the benchmarks.

torchvision has no width-multiplied ResNet (the shapes preset's ResNet-18 at width 0.25),
so the ResNet body is torchvision's own ``ResNet`` with its stem and four stages rebuilt
at our widths by its own ``_make_layer``; everything else is torchvision's stock parts
(``BackboneWithFPN``, ``AnchorGenerator``, ``TwoMLPHead``, ``MaskRCNNHeads``, ...) with the
config's sizes. Our parameter names are torchvision's, so ``load_ours`` copies a state
dict across by name, and a mismatch in any shape is an error from torch.

Needs torch; imported only by the benchmarks' torchvision child processes.
"""

from __future__ import annotations

import inspect


def torchvision_twin(cfg):
    """An untrained torchvision ``MaskRCNN`` with the module tree of ``MaskRCNN(cfg)``."""
    import torch
    from torchvision.models import resnet
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    from torchvision.ops.misc import FrozenBatchNorm2d

    if cfg.norm_layer == "frozen_batch_norm":

        def norm(c):
            return FrozenBatchNorm2d(c, cfg.frozen_bn_eps)
    else:
        norm = torch.nn.BatchNorm2d
    block, layers = {
        "resnet18": (resnet.BasicBlock, [2, 2, 2, 2]),
        "resnet34": (resnet.BasicBlock, [3, 4, 6, 3]),
        "resnet50": (resnet.Bottleneck, [3, 4, 6, 3]),
        "resnet101": (resnet.Bottleneck, [3, 4, 23, 3]),
    }[cfg.backbone]
    body = resnet.ResNet(block, layers, norm_layer=norm)
    widths = [int(w * cfg.backbone_width) for w in (64, 128, 256, 512)]
    body.inplanes = widths[0]
    body.conv1 = torch.nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
    body.bn1 = norm(widths[0])
    for i, (width, blocks) in enumerate(zip(widths, layers, strict=True)):
        stage = body._make_layer(block, width, blocks, stride=1 if i == 0 else 2)
        setattr(body, f"layer{i + 1}", stage)
    del body.fc, body.avgpool
    # torchvision's _resnet_fpn_extractor: freeze all but the last trainable stages.
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][: cfg.trainable_backbone_layers]
    if cfg.trainable_backbone_layers == 5:
        trainable.append("bn1")
    for name, parameter in body.named_parameters():
        parameter.requires_grad_(any(name.startswith(t) for t in trainable))
    c = cfg.fpn_out_channels
    backbone = BackboneWithFPN(
        body,
        {f"layer{i + 1}": str(i) for i in range(4)},
        [w * block.expansion for w in widths],
        c,
        extra_blocks=LastLevelMaxPool(),
    )
    ratios = cfg.aspect_ratios
    kwargs = {
        name: getattr(cfg, name)
        for name in inspect.signature(MaskRCNN.__init__).parameters
        if hasattr(cfg, name) and name not in ("backbone", "num_classes")
    }
    res, size = cfg.box_representation_size, cfg.box_roi_output_size
    return MaskRCNN(
        backbone,
        num_classes=None,  # the given predictors fix it
        rpn_anchor_generator=AnchorGenerator(cfg.anchor_sizes, ratios),
        box_head=TwoMLPHead(c * size * size, res),
        box_predictor=FastRCNNPredictor(res, cfg.num_classes),
        mask_head=MaskRCNNHeads(c, list(cfg.mask_layers), cfg.mask_dilation),
        mask_predictor=MaskRCNNPredictor(cfg.mask_layers[-1], cfg.mask_layers[-1], cfg.num_classes),
        **kwargs,
    )


def load_ours(twin, state):
    """Copy our state dict (name -> array) into ``twin``; returns the names it lacks."""
    import torch

    missing, unexpected = twin.load_state_dict(
        {k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=False
    )
    if unexpected:
        raise KeyError(f"torchvision's model has no parameters named {unexpected[:5]}")
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing:
        raise KeyError(f"our state dict lacks {missing[:5]}")
    return missing
