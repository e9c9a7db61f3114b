"""ResNet / ResNeXt body: torchvision names and outputs, shapes, frozen stages, gradients."""

import math

import numpy as np
import pytest
from backbone_parity import assert_close_relative, fixture, torchvision_case
from gradcheck import check_module_gradients

from tinymaskrcnn import backbone, nn
from tinymaskrcnn.backbone import BasicBlock, Bottleneck, ResNet
from tinymaskrcnn.fpn import resnet_fpn_backbone


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext101_32x8d"])
def test_state_dict_names_and_shapes_are_torchvisions(arch):
    f = fixture(arch)
    model = resnet_fpn_backbone(arch, rng=np.random.default_rng(0))
    ours = {k: ",".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    assert sorted(ours) == list(f["names"])
    assert [ours[k] for k in f["names"]] == list(f["shapes"])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext101_32x8d"])
def test_c2_to_c5_match_torchvision_for_the_same_weights(arch):
    model, f, x = torchvision_case(arch)
    step = int(f["channel_step"])
    for level, c in zip(range(2, 6), model.body(x), strict=True):
        assert_close_relative(c[:, ::step], f[f"C{level}"], f"{arch} C{level}")


# (H, W) -> expected (h, w) of C2..C5: each stride-2 step takes ceil(size / 2).
@pytest.mark.parametrize("hw", [(32, 32), (45, 61), (33, 97), (64, 17)])
def test_c2_to_c5_sizes_halve_with_rounding_up_for_odd_images(hw):
    model = ResNet("resnet18", width=0.125, rng=np.random.default_rng(0)).eval()
    feats = model(np.zeros((1, 3, *hw), np.float32))
    h, w = hw
    for level, c in enumerate(feats, start=2):
        assert c.shape[2:] == (math.ceil(h / 2**level), math.ceil(w / 2**level))


@pytest.mark.parametrize(
    "arch,width,channels",
    [("resnet18", 1.0, [64, 128, 256, 512]), ("resnet34", 0.5, [32, 64, 128, 256]),
     ("resnet50", 0.25, [64, 128, 256, 512]), ("resnext101_32x8d", 0.125, [32, 64, 128, 256])],
)  # fmt: skip
def test_stage_channels_follow_the_architecture_and_width(arch, width, channels):
    model = ResNet(arch, width=width, rng=np.random.default_rng(0)).eval()
    assert model.out_channels == channels
    assert [c.shape[1] for c in model(np.zeros((1, 3, 32, 32), np.float32))] == channels


def test_resnext_bottleneck_uses_32_groups_of_8_channels_per_64():
    model = ResNet("resnext101_32x8d", width=0.125, rng=np.random.default_rng(0))
    conv2 = model.layer1[0].conv2
    assert conv2.groups == 32 and conv2.weight.shape == (32, 1, 3, 3)


def test_conv1_and_layer1_are_frozen_by_default():
    model = ResNet("resnet18", width=0.125, rng=np.random.default_rng(0))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}


def test_frozen_stages_keep_nothing_and_backward_stops_above_them():
    rng = np.random.default_rng(0)
    model = ResNet("resnet18", width=0.125, rng=rng)
    feats = model(rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    assert model.layer1._saved == [] and all(m._saved == [] for m in model.layer1.modules())
    assert model.backward([np.ones_like(c) for c in feats]) is None
    assert model.layer2[0].conv1.weight.grad is not None
    assert all(m._saved == [] for m in model.modules())


def test_training_can_leave_out_the_images_gradient_and_nothing_else():
    # MaskRCNN.backward asks for no image gradient (conv1's largest product); every
    # parameter's gradient, conv1's included, is the same as with it, bit for bit.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 32, 32))
    grads = None
    results = {}
    for image_grad in (True, False):
        model = ResNet("resnet18", width=0.125, trainable_layers=5, rng=np.random.default_rng(0))
        model = model.astype(np.float64)
        feats = model(x)
        if grads is None:
            grads = [rng.standard_normal(c.shape) for c in feats]
        results[image_grad] = model.backward(grads, image_grad=image_grad)
        params = {n: p.grad.copy() for n, p in model.named_parameters()}
        results[image_grad, "params"] = params
    assert results[True].shape == x.shape and results[False] is None
    with_image, without = results[True, "params"], results[False, "params"]
    assert with_image.keys() == without.keys() and "conv1.weight" in without
    for name in with_image:
        np.testing.assert_array_equal(without[name], with_image[name], err_msg=name)


def test_frozen_batch_norm_eps_reaches_every_norm_layer():
    model = ResNet("resnet18", width=0.125, frozen_bn_eps=0.0, rng=np.random.default_rng(0))
    eps = {m.eps for m in model.modules() if isinstance(m, nn.FrozenBatchNorm2d)}
    assert eps == {0.0}


def _random_frozen_stats(module, rng):
    for m in module.modules():
        if isinstance(m, nn.FrozenBatchNorm2d):
            c = m.num_features
            m.weight, m.bias = rng.uniform(0.5, 1.5, c), rng.uniform(-0.5, 0.5, c)
            m.running_mean, m.running_var = rng.uniform(-0.5, 0.5, c), rng.uniform(0.5, 1.5, c)


def test_bottleneck_with_groups_and_downsampling_gradients_match_central_differences():
    rng = np.random.default_rng(1)
    down = nn.Sequential(nn.Conv2d(4, 16, 1, 2, bias=False, rng=rng), nn.FrozenBatchNorm2d(16))
    block = Bottleneck(4, 4, 2, down, groups=2, base_width=64, norm="frozen", eps=1e-5, rng=rng)
    block.astype(np.float64)
    _random_frozen_stats(block, rng)
    assert check_module_gradients(block, rng.standard_normal((2, 4, 7, 6)), rng) == 4


def test_basic_block_gradients_match_central_differences():
    rng = np.random.default_rng(2)
    block = BasicBlock(3, 3, 1, None, 1, 64, "batch", 1e-5, rng).astype(np.float64)
    assert check_module_gradients(block, rng.standard_normal((2, 3, 5, 5)), rng) == 6


def test_whole_resnet_gradients_match_central_differences_when_every_stage_trains():
    rng = np.random.default_rng(3)
    model = ResNet("resnet18", width=1 / 16, trainable_layers=5, rng=rng).astype(np.float64)
    _random_frozen_stats(model, rng)
    x = rng.standard_normal((1, 3, 19, 23))
    assert (
        check_module_gradients(model, x, rng, max_entries=6) == 20
    )  # conv1, 16 in blocks, 3 shortcuts


def test_non_finite_images_are_rejected():
    model = ResNet("resnet18", width=0.125, rng=np.random.default_rng(0))
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        model(x)


def test_images_must_have_three_channels():
    model = ResNet("resnet18", width=0.125, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(np.zeros((1, 1, 32, 32), np.float32))


def test_unknown_architectures_are_named_in_the_error():
    with pytest.raises(ValueError, match="resnext101_32x8d"):
        ResNet("resnet152")


@pytest.mark.parametrize("arch", ["resnet18", "resnext101_32x8d"])
def test_the_folded_inference_path_equals_the_layer_by_layer_path(arch):
    rng = np.random.default_rng(4)
    model = ResNet(arch, width=0.125, trainable_layers=5, rng=rng)
    _random_frozen_stats(model, rng)
    model.astype(np.float32)
    x = rng.standard_normal((2, 3, 35, 29)).astype(np.float32)
    layered = model.train()(x)  # training mode keeps tensors: the unfolded path
    model.forget()
    folded = model.eval()(x)
    # On the host the fused epilogue does frozen batch norm's own arithmetic (x * scale,
    # then + shift) after the same convolution: the same values, not merely close ones
    # (training's ReLU may give -0.0 where np.maximum gives 0.0, which compare equal).
    for a, b in zip(folded, layered, strict=True):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_in_eval_mode_folds_like_frozen_batch_norm(monkeypatch):
    # Its running statistics make it a fixed affine map too, so the folded path runs it
    # (and under "cuda" the maps stay on the device); under no_grad in training mode it
    # normalises with the batch's statistics, which cannot fold.
    rng = np.random.default_rng(5)
    model = ResNet("resnet18", width=0.125, trainable_layers=5, norm="batch", rng=rng)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data, m.bias.data = rng.uniform(0.5, 1.5, c), rng.uniform(-0.5, 0.5, c)
            m.running_mean, m.running_var = rng.uniform(-0.5, 0.5, c), rng.uniform(0.5, 1.5, c)
    model.astype(np.float64)
    x = rng.standard_normal((2, 3, 35, 29))
    with nn.no_grad():
        assert not model.train().folds()
    assert model.eval().folds()
    folded = model(x)
    monkeypatch.setattr(backbone, "_folds", lambda block: False)
    layered = model(x)
    for a, b in zip(folded, layered, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())


@pytest.mark.slow
def test_resnet50_fpn_inference_at_800x1216_stays_under_4_gb():
    import tracemalloc

    model = resnet_fpn_backbone("resnet50", rng=np.random.default_rng(0)).eval()
    x = np.random.default_rng(1).standard_normal((1, 3, 800, 1216)).astype(np.float32)
    tracemalloc.start()
    pyramid = model(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [p.shape[2:] for p in pyramid] == [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    assert peak < 4 * 2**30, f"peak {peak / 2**30:.2f} GiB"
