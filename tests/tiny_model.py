"""Mask R-CNN configurations small enough for finite differences and sub-second steps."""

from tinymaskrcnn.config import MaskRCNNConfig

# Every stage present with few channels: the narrowest model that still has them all.
TINY_WIDTHS = dict(
    backbone_width=0.125,
    fpn_out_channels=8,
    box_representation_size=16,
    mask_layers=(8,),
)


def tiny_config(**overrides):
    """A model small enough for finite differences: every stage present, few channels."""
    base = dict(
        **TINY_WIDTHS,
        min_size=64,
        max_size=64,
        rpn_pre_nms_top_n_train=100,
        rpn_post_nms_top_n_train=30,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=30,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=32,
    )
    return MaskRCNNConfig.shapes(**{**base, **overrides})
