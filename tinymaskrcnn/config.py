"""Every hyper-parameter of Mask R-CNN in one dataclass, with torchvision's defaults.

Field names are those of the arguments of torchvision's
``torchvision.models.detection.MaskRCNN`` (``min_size``, ``rpn_batch_size_per_image``,
``box_score_thresh``, ...) so that settings move between the two unchanged. A few fields
torchvision fixes inside its code are exposed here (head widths, the RoI operator, the
mask loss, the frozen batch-norm epsilon) because the small shapes model and the
paper's ablations (Mask R-CNN Table 2) need to change them.

Two presets::

    MaskRCNNConfig.torchvision_resnet50_fpn(num_classes=91)   # maskrcnn_resnet50_fpn
    MaskRCNNConfig.shapes()                                   # the small synthetic-shapes model

Both accept any field as a keyword override; a misspelt name raises a ValueError that
lists the closest field names.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
from dataclasses import dataclass

from .losses import MASK_LOSSES
from .roi_ops import ROI_OPS

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext101_32x8d")
NORM_LAYERS = ("frozen_batch_norm", "batch_norm")

# ImageNet statistics of torchvision's GeneralizedRCNNTransform (RGB, images in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class MaskRCNNConfig:
    """Hyper-parameters of a Mask R-CNN; defaults are torchvision's maskrcnn_resnet50_fpn.

    Model shape
        num_classes: classes including background (index 0); COCO uses 91.
        backbone: ResNet variant, torchvision's names (see ``BACKBONES``).
        backbone_width: width multiplier of every ResNet stage (1.0 = torchvision's
            widths; 0.25 gives a ResNet with 16..128 channels for the shapes model).
        trainable_backbone_layers: how many of (layer4, layer3, layer2, layer1, conv1)
            train, counted from the top; torchvision's default 3 freezes conv1 and layer1.
        norm_layer: "frozen_batch_norm" (fixed statistics, torchvision with pretrained
            weights) or "batch_norm" (batch statistics while training, for training
            from scratch).
        frozen_bn_eps: epsilon of FrozenBatchNorm2d. torchvision's layer defaults to 1e-5
            but its COCO Mask R-CNN v1 weights were trained with 0.0, which is what the
            torchvision preset uses so that those weights reproduce its outputs.
        fpn_out_channels: channels of every pyramid level P2..P6 (256).
        box_representation_size: width of the two fc layers of TwoMLPHead (1024).
        mask_layers: output channels of the mask head's 3x3 convolutions (4 x 256).
        mask_dilation: dilation of those convolutions (1).

    Transform (input normalisation and resizing, docs/architecture.md, Transform)
        min_size, max_size: resize so the short side is ``min_size`` unless the long
            side would exceed ``max_size``.
        image_mean, image_std: per-channel normalisation, RGB in [0, 1].
        size_divisible: the batch is padded to a multiple of this (32).

    Anchors and RPN (Faster R-CNN §3.1)
        anchor_sizes: one tuple of sizes (pixels) per level P2..P6.
        aspect_ratios: one tuple of ratios h / w per level.
        rpn_pre_nms_top_n_train / _test: boxes kept per level before NMS.
        rpn_post_nms_top_n_train / _test: proposals kept per image after NMS.
        rpn_nms_thresh: IoU threshold of the per-level NMS (0.7).
        rpn_fg_iou_thresh, rpn_bg_iou_thresh: matcher thresholds (0.7 / 0.3).
        rpn_batch_size_per_image, rpn_positive_fraction: anchor sampling (256 / 0.5).
        rpn_score_thresh: proposals with sigmoid(objectness) below this are dropped (0.0).

    RoI heads (Mask R-CNN §3)
        roi_op: how features of a proposal are read: "align" (RoIAlign, the paper's),
            "pool" (RoIPool, Faster R-CNN) or "crop_and_resize" (the TF variant); the
            ablation of Mask R-CNN Table 2c.
        box_roi_output_size, mask_roi_output_size: RoI feature sizes (7 and 14).
        roi_sampling_ratio: RoIAlign samples per bin and axis (2).
        box_fg_iou_thresh, box_bg_iou_thresh: proposal matcher thresholds (0.5 / 0.5).
        box_batch_size_per_image, box_positive_fraction: proposal sampling (512 / 0.25).
        bbox_reg_weights: box coder weights of the box head (10, 10, 5, 5).
        box_score_thresh: detections below this score are dropped (0.05).
        box_nms_thresh: per-class NMS threshold of the detections (0.5).
        box_detections_per_img: detections kept per image (100).
        mask_loss: "sigmoid" (per-class binary cross-entropy on the gt class's channel,
            the paper's choice) or "softmax" (multinomial over classes, Table 2b).
    """

    # model shape
    num_classes: int = 91
    backbone: str = "resnet50"
    backbone_width: float = 1.0
    trainable_backbone_layers: int = 3
    norm_layer: str = "frozen_batch_norm"
    frozen_bn_eps: float = 1e-5
    fpn_out_channels: int = 256
    box_representation_size: int = 1024
    mask_layers: tuple = (256, 256, 256, 256)
    mask_dilation: int = 1
    # transform
    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple = IMAGENET_MEAN
    image_std: tuple = IMAGENET_STD
    size_divisible: int = 32
    # anchors and RPN
    anchor_sizes: tuple = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: tuple = ((0.5, 1.0, 2.0),) * 5
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    # RoI heads
    roi_op: str = "align"
    box_roi_output_size: int = 7
    mask_roi_output_size: int = 14
    roi_sampling_ratio: int = 2
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    bbox_reg_weights: tuple = (10.0, 10.0, 5.0, 5.0)
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    mask_loss: str = "sigmoid"

    def __post_init__(self):
        self.mask_layers = tuple(int(c) for c in self.mask_layers)
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        self.anchor_sizes = tuple(tuple(int(s) for s in level) for level in self.anchor_sizes)
        self.aspect_ratios = tuple(tuple(float(r) for r in lv) for lv in self.aspect_ratios)
        self.bbox_reg_weights = tuple(float(w) for w in self.bbox_reg_weights)
        self._validate()

    def _validate(self):
        def choice(name, allowed):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")

        def positive(name, integer=True):
            value = getattr(self, name)
            ok = isinstance(value, numbers.Integral if integer else numbers.Real)
            if not ok or isinstance(value, bool) or not value > 0:
                kind = "a positive integer" if integer else "a positive number"
                raise ValueError(f"{name} must be {kind}; got {value!r}")

        def fraction(name):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not (0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")

        choice("backbone", BACKBONES)
        choice("norm_layer", NORM_LAYERS)
        choice("roi_op", ROI_OPS)
        choice("mask_loss", tuple(MASK_LOSSES))
        if not isinstance(self.num_classes, numbers.Integral) or self.num_classes < 2:
            raise ValueError(
                f"num_classes must be an integer >= 2 (background + at least one class); "
                f"got {self.num_classes!r}"
            )
        for name in (
            "fpn_out_channels",
            "box_representation_size",
            "mask_dilation",
            "min_size",
            "max_size",
            "size_divisible",
            "rpn_pre_nms_top_n_train",
            "rpn_pre_nms_top_n_test",
            "rpn_post_nms_top_n_train",
            "rpn_post_nms_top_n_test",
            "rpn_batch_size_per_image",
            "box_roi_output_size",
            "mask_roi_output_size",
            "box_batch_size_per_image",
            "box_detections_per_img",
        ):
            positive(name)
        positive("backbone_width", integer=False)
        if not isinstance(self.roi_sampling_ratio, numbers.Integral):
            raise ValueError(
                f"roi_sampling_ratio must be an integer (<= 0: adaptive); "
                f"got {self.roi_sampling_ratio!r}"
            )
        if not isinstance(self.trainable_backbone_layers, numbers.Integral) or not (
            0 <= self.trainable_backbone_layers <= 5
        ):
            raise ValueError(
                f"trainable_backbone_layers must be an integer in [0, 5]; "
                f"got {self.trainable_backbone_layers!r}"
            )
        if not (isinstance(self.frozen_bn_eps, numbers.Real) and self.frozen_bn_eps >= 0):
            raise ValueError(f"frozen_bn_eps must be a number >= 0; got {self.frozen_bn_eps!r}")
        for name in (
            "rpn_nms_thresh",
            "rpn_fg_iou_thresh",
            "rpn_bg_iou_thresh",
            "rpn_positive_fraction",
            "rpn_score_thresh",
            "box_fg_iou_thresh",
            "box_bg_iou_thresh",
            "box_positive_fraction",
            "box_score_thresh",
            "box_nms_thresh",
        ):
            fraction(name)
        if self.rpn_bg_iou_thresh > self.rpn_fg_iou_thresh:
            raise ValueError(
                f"rpn_bg_iou_thresh must be <= rpn_fg_iou_thresh; "
                f"got {self.rpn_bg_iou_thresh} > {self.rpn_fg_iou_thresh}"
            )
        if self.box_bg_iou_thresh > self.box_fg_iou_thresh:
            raise ValueError(
                f"box_bg_iou_thresh must be <= box_fg_iou_thresh; "
                f"got {self.box_bg_iou_thresh} > {self.box_fg_iou_thresh}"
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(
                f"image_mean and image_std must hold 3 numbers (RGB), std > 0; "
                f"got {self.image_mean} and {self.image_std}"
            )
        if len(self.anchor_sizes) != 5 or len(self.aspect_ratios) != 5:
            raise ValueError(
                f"anchor_sizes and aspect_ratios must each hold one tuple per pyramid level "
                f"P2..P6 (5); got {len(self.anchor_sizes)} and {len(self.aspect_ratios)}"
            )
        per_level = zip(self.anchor_sizes, self.aspect_ratios, strict=True)
        if len({len(s) * len(r) for s, r in per_level}) != 1:
            raise ValueError(
                "every level must have the same number of anchors per location "
                "(len(sizes) * len(ratios)), because the RPN head is shared across levels; "
                f"got anchor_sizes={self.anchor_sizes}, aspect_ratios={self.aspect_ratios}"
            )
        if any(s <= 0 for lv in self.anchor_sizes for s in lv) or any(
            r <= 0 for lv in self.aspect_ratios for r in lv
        ):
            raise ValueError("anchor_sizes and aspect_ratios must be positive")
        if not self.mask_layers or min(self.mask_layers) <= 0:
            raise ValueError(f"mask_layers must be positive channel counts; got {self.mask_layers}")
        if len(self.bbox_reg_weights) != 4 or min(self.bbox_reg_weights) <= 0:
            raise ValueError(
                f"bbox_reg_weights must be 4 positive numbers (wx, wy, ww, wh); "
                f"got {self.bbox_reg_weights}"
            )

    # ---- derived values -----------------------------------------------------------

    @property
    def num_anchors_per_location(self) -> int:
        """A: anchors per feature-map location (the same on every level)."""
        return len(self.anchor_sizes[0]) * len(self.aspect_ratios[0])

    @property
    def mask_output_size(self) -> int:
        """Side of the predicted masks: twice the mask RoI size (transposed conv, 28)."""
        return 2 * self.mask_roi_output_size

    # ---- presets ------------------------------------------------------------------

    @classmethod
    def torchvision_resnet50_fpn(cls, num_classes: int = 91, **overrides) -> MaskRCNNConfig:
        """torchvision's ``maskrcnn_resnet50_fpn``: ResNet-50-FPN, frozen BN with eps 0.0.

        Any field can be overridden by keyword, e.g. ``min_size=256, max_size=320``.
        """
        base = dict(num_classes=num_classes, frozen_bn_eps=0.0)
        return cls._preset(base, overrides)

    @classmethod
    def shapes(cls, **overrides) -> MaskRCNNConfig:
        """A small model for the 128x128 synthetic shapes (docs/architecture.md, Data),
        trainable on a CPU.

        ResNet-18 at a quarter of the width (C2..C5 with 16..128 channels), trained from
        scratch with batch norm (no pretrained weights exist for it, so every stage
        trains); 64 FPN channels; anchors 8..128 px for shapes of 40..62 px; fewer
        proposals and sampled RoIs than COCO needs, since an image holds at most four
        objects. Any field can be overridden by keyword.
        """
        base = dict(
            num_classes=4,
            backbone="resnet18",
            backbone_width=0.25,
            trainable_backbone_layers=5,
            norm_layer="batch_norm",
            fpn_out_channels=64,
            box_representation_size=256,
            mask_layers=(64, 64),
            min_size=128,
            max_size=128,
            anchor_sizes=((8,), (16,), (32,), (64,), (128,)),
            rpn_pre_nms_top_n_train=600,
            rpn_pre_nms_top_n_test=300,
            rpn_post_nms_top_n_train=300,
            rpn_post_nms_top_n_test=100,
            box_batch_size_per_image=128,
            box_detections_per_img=20,
        )
        return cls._preset(base, overrides)

    @classmethod
    def _preset(cls, base: dict, overrides: dict) -> MaskRCNNConfig:
        check_field_names(overrides)
        return cls(**{**base, **overrides})

    # ---- checkpoint metadata -----------------------------------------------------

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists); ``from_dict`` inverts it."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> MaskRCNNConfig:
        """Build a config from ``to_dict``'s output (unknown keys are an error)."""
        if not isinstance(data, dict):
            raise ValueError(f"config must be a dict of field -> value; got {type(data).__name__}")
        check_field_names(data)
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MaskRCNNConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config json does not parse: {err}") from None
        return cls.from_dict(data)


def field_names() -> list[str]:
    """Names of every MaskRCNNConfig field."""
    return [f.name for f in dataclasses.fields(MaskRCNNConfig)]


def check_field_names(names) -> None:
    """Raise a ValueError naming each unknown field and its closest real names."""
    known = field_names()
    problems = []
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"{name!r}{hint}")
    if problems:
        raise ValueError(
            f"unknown MaskRCNNConfig field{'s' if len(problems) > 1 else ''}: {'; '.join(problems)}"
        )
