"""The whole model under the CUDA backend equals it under NumPy, in float64.

One eval forward (detections and pasted masks) and one training step (the five losses
and every parameter gradient), with the CUDA kernels doing what they do in real use:
every convolution and its backward, RoIAlign and its backward, IoU, box decoding and
batched NMS (the tests check that each of them ran, and count the host <-> device
copies of the whole run, ``kernels.count_transfers``). Under Numba's simulator (the
default; the real GPU under ``-m gpu``) every CUDA thread is a Python thread, which on
2 busy cores costs about a millisecond, and every launch is at least one block of
256 threads. So this is the smallest model that still has every stage and non-empty
data at each: a 16 x 16 image, ResNet-18 at 1/64 of its width (1..8 channels), 2 FPN
channels, 2 x 2 RoI features, a few proposals. The backbone is frozen (its forward still
runs on CUDA; at 16 px its last stage is 1 x 1, too small for batch norm in training,
and its backward would more than double the time). Measured under the simulator on
2 busy shared cores: eval 20-50 s, the training step 45-70 s (numpy: milliseconds).
"""

import numpy as np
import pytest
from tiny_model import tiny_config

from tinymaskrcnn import kernels, nn
from tinymaskrcnn.kernels import use_backend
from tinymaskrcnn.model import LOSS_NAMES, MaskRCNN

pytestmark = pytest.mark.cuda

SIZE = 16
FEW = 6  # proposals before and after the RPN's NMS
CONFIG = dict(
    min_size=SIZE,
    max_size=SIZE,
    size_divisible=SIZE,
    backbone_width=1 / 64,
    norm_layer="frozen_batch_norm",
    trainable_backbone_layers=0,
    fpn_out_channels=2,
    box_representation_size=4,
    mask_layers=(2,),
    box_roi_output_size=2,
    mask_roi_output_size=2,
    rpn_pre_nms_top_n_train=FEW,
    rpn_post_nms_top_n_train=FEW,
    rpn_pre_nms_top_n_test=FEW,
    rpn_post_nms_top_n_test=FEW,
    rpn_batch_size_per_image=16,
    box_batch_size_per_image=4,
    box_detections_per_img=3,
)
# float64 on both backends: the same arithmetic in another order.
F64 = {"rtol": 1e-10, "atol": 1e-12}
# Host -> device and device -> host copies of an eval forward of this model, as they
# stand (docs/architecture.md, Backends and dispatch): the image goes in once and
# the maps stay on the device from the backbone through RoIAlign and the heads; the
# first forward copies every layer's parameters in (kernels.DeviceCopy), the next ones
# do not. The RPN's maps and the heads' outputs come back for the score sorts and the
# masks' pasting, and the RoIs' geometry goes in. A change that keeps more on the
# device lowers them; update the numbers then.
FIRST_EVAL_COPIES = {"to_device": 101, "to_host": 19}
EVAL_COPIES = {"to_device": 25, "to_host": 19}
# ... and of one training step (forward and backward; the gradients come back for SGD).
TRAIN_COPIES = {"to_device": 267, "to_host": 130}


def tiny_scene():
    """A 16 x 16 float64 image with two rectangles, and their targets."""
    rng = np.random.default_rng(3)
    image = 0.5 + rng.uniform(-0.05, 0.05, (3, SIZE, SIZE))
    masks = np.zeros((2, SIZE, SIZE), np.uint8)
    masks[0, 2:9, 1:7] = 1
    masks[1, 7:15, 8:15] = 1
    for m, colour in zip(masks, [(0.9, 0.2, 0.1), (0.1, 0.3, 0.9)], strict=True):
        image[:, m.astype(bool)] = np.array(colour)[:, None]
    target = {
        "boxes": np.array([[1, 2, 7, 9], [8, 7, 15, 15]], np.float64),
        "labels": np.array([1, 3]),
        "masks": masks,
    }
    return image, target


@pytest.fixture
def model():
    # A fresh model for each test: the copies counted depend on which parameters are
    # already on the device (kernels.DeviceCopy), so no test may inherit another's.
    return MaskRCNN(tiny_config(**CONFIG), rng=np.random.default_rng(1)).astype(np.float64)


def _recording_kernels(monkeypatch):
    """Patch kernels.implementation to note every op that got a kernel; returns the set."""
    used = set()
    choose = kernels.implementation

    def implementation(op):
        fast = choose(op)
        if fast is not None:
            used.add(op)
        return fast

    monkeypatch.setattr(kernels, "implementation", implementation)
    return used


def test_eval_detections_under_cuda_equal_numpys(model, monkeypatch):
    image, _ = tiny_scene()
    model.eval()
    (expected,) = model([image])
    used = _recording_kernels(monkeypatch)
    with use_backend("cuda"), kernels.count_transfers() as copies:
        (first,) = model([image])
    assert {"conv2d", "roi_align", "box_decode", "batched_nms"} <= used
    assert {"to_device": copies.to_device, "to_host": copies.to_host} == FIRST_EVAL_COPIES
    with use_backend("cuda"), kernels.count_transfers() as copies:
        (got,) = model([image])
    assert {"to_device": copies.to_device, "to_host": copies.to_host} == EVAL_COPIES
    for key in first:
        np.testing.assert_array_equal(got[key], first[key], err_msg=key)
    assert len(expected["boxes"]) > 0, "no detections: the mask branch would not run"
    assert got.keys() == expected.keys()
    np.testing.assert_array_equal(got["labels"], expected["labels"])
    for key in ("boxes", "scores", "masks"):
        assert got[key].dtype == expected[key].dtype
        np.testing.assert_allclose(got[key], expected[key], **F64, err_msg=key)


@pytest.mark.parametrize("norm_layer", ["frozen_batch_norm", "batch_norm"])
def test_in_inference_the_backbone_and_fpn_keep_their_maps_on_the_device(model, norm_layer):
    # Batch norm in inference (frozen, or with its running statistics) folds into the
    # convolutions, and every layer between two of them has a CUDA kernel for device
    # arrays: from the image to P2..P6 nothing comes back, and what goes in is the image
    # and each convolution's parameters, once: the folded ones their scaled weight and
    # the batch norm's shift, the FPN's their weight and bias.
    image, _ = tiny_scene()
    if norm_layer != CONFIG["norm_layer"]:
        cfg = tiny_config(**{**CONFIG, "norm_layer": norm_layer})
        model = MaskRCNN(cfg, rng=np.random.default_rng(1)).astype(np.float64)
    model.eval()
    batch, _, _ = model.transform([image])
    expected = model.backbone(batch)
    assert model.backbone.body.folds()
    with use_backend("cuda"), kernels.count_transfers() as copies:
        features = model.backbone(kernels.resident(batch))
    body = [m for m in model.backbone.body.modules() if isinstance(m, nn.Conv2d)]
    fpn = [m for m in model.backbone.fpn.modules() if isinstance(m, nn.Conv2d)]
    assert copies.to_host == 0
    assert copies.to_device == 1 + 2 * len(body) + 2 * len(fpn)
    # The parameters stay there (kernels.DeviceCopy): the next forward copies the image.
    with use_backend("cuda"), kernels.count_transfers() as copies:
        again = model.backbone(kernels.resident(batch))
    assert (copies.to_device, copies.to_host) == (1, 0)
    for level, (got, first) in enumerate(zip(again, features, strict=True)):
        np.testing.assert_array_equal(kernels.to_host(got), kernels.to_host(first), f"P{level + 2}")
    assert len(features) == len(expected) == 5
    for level, (got, want) in enumerate(zip(features, expected, strict=True)):
        assert kernels.is_device_array(got), f"P{level + 2} came back to the host"
        np.testing.assert_allclose(kernels.to_host(got), want, **F64, err_msg=f"P{level + 2}")


def _training_step(model, image, target):
    model.train()
    model.rng = np.random.default_rng(7)  # the same samples on both backends
    model.zero_grad()
    losses = model([image], [target])
    model.backward()
    grads = {n: p.grad.copy() for n, p in model.named_parameters() if p.requires_grad}
    return losses, grads


def test_a_training_step_under_cuda_equals_numpys(model, monkeypatch):
    image, target = tiny_scene()
    expected_losses, expected_grads = _training_step(model, image, target)
    used = _recording_kernels(monkeypatch)
    with use_backend("cuda"), kernels.count_transfers() as copies:
        losses, grads = _training_step(model, image, target)
    assert {"conv2d", "conv2d_backward", "roi_align", "roi_align_backward", "box_iou"} <= used
    assert {"to_device": copies.to_device, "to_host": copies.to_host} == TRAIN_COPIES
    assert expected_losses["loss_mask"] > 0, "no positive RoI: the mask branch did not train"
    for name in LOSS_NAMES:
        assert losses[name] == pytest.approx(expected_losses[name], rel=1e-10, abs=1e-12), name
    assert grads.keys() == expected_grads.keys()
    assert any(name.startswith("roi_heads.mask") for name in grads)
    for name, g in expected_grads.items():
        assert np.abs(g).max() > 0, f"{name} got no gradient"
        np.testing.assert_allclose(grads[name], g, **F64, err_msg=name)
