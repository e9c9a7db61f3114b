"""FPN: torchvision outputs for the same weights, P2..P6 shapes, old key names, gradients."""

import math

import numpy as np
import pytest
from backbone_parity import assert_close_relative, torchvision_case
from gradcheck import check_module_gradients

from tinymaskrcnn.fpn import FeaturePyramidNetwork, LastLevelMaxPool, resnet_fpn_backbone


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext101_32x8d"])
def test_p2_to_p6_match_torchvision_for_the_same_weights(arch):
    model, f, x = torchvision_case(arch)
    step = int(f["channel_step"])
    for level, p in zip(range(2, 7), model(x), strict=True):
        assert_close_relative(p[:, ::step], f[f"P{level}"], f"{arch} P{level}")


@pytest.mark.parametrize("hw", [(64, 64), (45, 61), (33, 97), (100, 37)])
def test_p2_to_p6_have_the_sizes_of_c2_to_c5_then_half_of_p5(hw):
    model = resnet_fpn_backbone("resnet18", width=0.125, out_channels=8,
                                rng=np.random.default_rng(0)).eval()  # fmt: skip
    x = np.zeros((2, 3, *hw), np.float32)
    feats = model.body(x)
    pyramid = model(x)
    assert [p.shape[2:] for p in pyramid[:4]] == [c.shape[2:] for c in feats]
    p5 = pyramid[3].shape[2:]
    assert pyramid[4].shape == (2, 8, math.ceil(p5[0] / 2), math.ceil(p5[1] / 2))
    assert all(p.shape[1] == 8 and p.dtype == np.float32 for p in pyramid)


def test_p6_is_every_other_cell_of_p5():
    p5 = np.random.default_rng(0).standard_normal((1, 2, 5, 4))
    np.testing.assert_array_equal(LastLevelMaxPool().eval()(p5), p5[:, :, ::2, ::2])


def test_the_older_key_generation_loads_to_the_same_weights():
    a = FeaturePyramidNetwork([4, 8], 3, rng=np.random.default_rng(0))
    b = FeaturePyramidNetwork([4, 8], 3, rng=np.random.default_rng(1))
    old = {k.replace("blocks.0.0.", "blocks.0.").replace("blocks.1.0.", "blocks.1."): v
           for k, v in a.state_dict().items()}  # fmt: skip
    assert "inner_blocks.0.weight" in old
    b.load_state_dict(old)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)


def test_state_dict_uses_the_new_key_generation():
    names = FeaturePyramidNetwork([4, 8], 3, rng=np.random.default_rng(0)).state_dict()
    assert "inner_blocks.0.0.weight" in names and "layer_blocks.1.0.bias" in names


def test_fpn_gradients_match_central_differences_with_odd_sizes():
    rng = np.random.default_rng(0)
    fpn = FeaturePyramidNetwork([2, 3, 4, 5], 3, rng=rng).astype(np.float64)
    for p in fpn.parameters():  # non-zero biases, so their gradients mean something
        p.data = p.data + rng.uniform(-0.1, 0.1, p.shape)
    sizes = [(9, 11), (5, 6), (3, 3), (2, 2)]
    feats = [rng.standard_normal((2, c, *s)) for c, s in zip([2, 3, 4, 5], sizes, strict=True)]
    assert check_module_gradients(fpn, feats, rng) == 16


def test_backbone_with_fpn_gradients_reach_the_image_when_everything_trains():
    rng = np.random.default_rng(1)
    model = resnet_fpn_backbone("resnet18", width=1 / 16, out_channels=4, trainable_layers=5,
                                rng=rng).astype(np.float64)  # fmt: skip
    x = rng.standard_normal((1, 3, 21, 18))
    assert check_module_gradients(model, x, rng, max_entries=4) == 20 + 16


def test_fpn_names_the_level_with_the_wrong_channel_count():
    fpn = FeaturePyramidNetwork([2, 3], 4, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"level 1 must be \(N, 3, H, W\)"):
        fpn([np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 2, 2))])
