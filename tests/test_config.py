import dataclasses
import json

import pytest

from tinymaskrcnn.config import MaskRCNNConfig, field_names


def test_defaults_are_torchvisions_maskrcnn_arguments():
    cfg = MaskRCNNConfig()
    assert (cfg.min_size, cfg.max_size) == (800, 1333)
    assert (cfg.rpn_pre_nms_top_n_train, cfg.rpn_pre_nms_top_n_test) == (2000, 1000)
    assert (cfg.rpn_post_nms_top_n_train, cfg.rpn_post_nms_top_n_test) == (2000, 1000)
    assert (cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh, cfg.rpn_nms_thresh) == (0.7, 0.3, 0.7)
    assert (cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction) == (256, 0.5)
    assert (cfg.box_fg_iou_thresh, cfg.box_bg_iou_thresh) == (0.5, 0.5)
    assert (cfg.box_batch_size_per_image, cfg.box_positive_fraction) == (512, 0.25)
    assert (cfg.box_score_thresh, cfg.box_nms_thresh, cfg.box_detections_per_img) == (
        0.05,
        0.5,
        100,
    )
    assert cfg.bbox_reg_weights == (10.0, 10.0, 5.0, 5.0)
    assert cfg.anchor_sizes == ((32,), (64,), (128,), (256,), (512,))
    assert cfg.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert cfg.mask_output_size == 28
    assert cfg.num_anchors_per_location == 3


def test_torchvision_preset_uses_the_coco_weights_frozen_bn_eps_of_zero():
    cfg = MaskRCNNConfig.torchvision_resnet50_fpn()
    assert cfg.num_classes == 91 and cfg.backbone == "resnet50" and cfg.frozen_bn_eps == 0.0
    assert cfg.norm_layer == "frozen_batch_norm" and cfg.trainable_backbone_layers == 3


def test_presets_accept_any_field_as_a_keyword_override():
    cfg = MaskRCNNConfig.torchvision_resnet50_fpn(
        num_classes=5, min_size=256, max_size=320, frozen_bn_eps=1e-5, rpn_batch_size_per_image=64
    )
    assert (cfg.num_classes, cfg.min_size, cfg.max_size) == (5, 256, 320)
    assert (cfg.frozen_bn_eps, cfg.rpn_batch_size_per_image) == (1e-5, 64)
    assert MaskRCNNConfig.shapes(roi_op="pool", mask_loss="softmax").roi_op == "pool"


def test_shapes_preset_is_small_and_sized_for_128_pixel_images():
    cfg = MaskRCNNConfig.shapes()
    assert (cfg.min_size, cfg.max_size) == (128, 128)
    assert cfg.anchor_sizes == ((8,), (16,), (32,), (64,), (128,))
    assert cfg.num_classes == 4 and cfg.backbone == "resnet18" and cfg.backbone_width < 1


def test_a_misspelt_override_names_the_closest_fields():
    with pytest.raises(ValueError, match=r"'min_sise'.*min_size"):
        MaskRCNNConfig.shapes(min_sise=100)


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(roi_op="warp"), "roi_op must be one of align, pool, crop_and_resize"),
        (dict(mask_loss="l2"), "mask_loss must be one of sigmoid, softmax"),
        (dict(backbone="vgg16"), "backbone must be one of"),
        (dict(num_classes=1), "num_classes must be an integer >= 2"),
        (dict(min_size=0), "min_size must be a positive integer"),
        (dict(rpn_fg_iou_thresh=1.5), r"rpn_fg_iou_thresh must be a number in \[0, 1\]"),
        (dict(rpn_bg_iou_thresh=0.8), "rpn_bg_iou_thresh must be <= rpn_fg_iou_thresh"),
        (dict(frozen_bn_eps=-1.0), "frozen_bn_eps must be a number >= 0"),
        (dict(anchor_sizes=((32,),) * 4), "one tuple per pyramid level"),
        (dict(aspect_ratios=((1.0,),) + ((0.5, 1.0, 2.0),) * 4), "same number of anchors"),
    ],
)
def test_an_invalid_field_value_is_a_value_error_naming_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        MaskRCNNConfig.torchvision_resnet50_fpn(**override)


def test_to_dict_is_json_and_from_dict_gives_back_the_same_config():
    cfg = MaskRCNNConfig.shapes(mask_loss="softmax", anchor_sizes=((4, 8),) * 5)
    text = json.dumps(cfg.to_dict())
    again = MaskRCNNConfig.from_dict(json.loads(text))
    assert again == cfg
    assert MaskRCNNConfig.from_json(cfg.to_json()) == cfg


def test_from_dict_rejects_unknown_keys():
    data = MaskRCNNConfig().to_dict()
    data["rpn_batch_size"] = 3
    with pytest.raises(ValueError, match="rpn_batch_size.*rpn_batch_size_per_image"):
        MaskRCNNConfig.from_dict(data)


def test_every_field_is_documented_in_the_class_docstring():
    doc = MaskRCNNConfig.__doc__
    for f in dataclasses.fields(MaskRCNNConfig):
        stem = f.name.removesuffix("_train").removesuffix("_test")
        assert stem in doc, f"field {f.name} is not documented"
    assert len(field_names()) == len(dataclasses.fields(MaskRCNNConfig))
