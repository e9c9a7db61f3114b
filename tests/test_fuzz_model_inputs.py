"""Fuzzing ``MaskRCNN.__call__``: every malformed image or target is a ValueError that
names it and says what was expected; every well-formed one runs to finite outputs.

docs/errors.md lists each probe (the ``PROBES`` ids below) and what it gets.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_model import tiny_config

from tinymaskrcnn import MaskRCNN

H, W = 40, 52  # a size the tiny model resizes up (min_size = max_size = 64)


@pytest.fixture(scope="module")
def model():
    return MaskRCNN(tiny_config(), rng=np.random.default_rng(0))


def _image(h=H, w=W, seed=0):
    return np.random.default_rng(seed).random((3, h, w), dtype=np.float32)


def _target(**change):
    masks = np.zeros((1, H, W), np.uint8)
    masks[0, 10:30, 5:25] = 1
    target = {"boxes": np.array([[5.0, 10.0, 25.0, 30.0]], np.float32), "labels": np.array([1])}
    return {**target, "masks": masks, **change}


def _check_detections(detections, sizes):
    for det, (h, w) in zip(detections, sizes, strict=True):
        d = len(det["boxes"])
        assert det["boxes"].shape == (d, 4) and det["masks"].shape == (d, 1, h, w)
        for key in ("boxes", "scores", "masks"):
            assert np.all(np.isfinite(det[key])), key
        assert np.all(det["boxes"] >= 0) and np.all(det["boxes"][:, [0, 2]] <= w)
        assert np.all(det["boxes"][:, [1, 3]] <= h)


# --- images: each probe and the error it gets --------------------------------------------

IMAGE_PROBES = {
    "image-not-a-list": (lambda: _image(), r"images must be a non-empty list.*pass a list"),
    "image-empty-list": (lambda: [], r"images must be a non-empty list.*empty list"),
    "image-dict": (lambda: {"a": _image()}, r"images must be a non-empty list.*got dict"),
    "image-uint8": (
        lambda: [(_image() * 255).astype(np.uint8)],
        r"images\[0\] must be float, RGB in \[0, 1\]; got dtype uint8: divide 0-255 .* by 255",
    ),
    "image-int64": (lambda: [np.zeros((3, H, W), np.int64)], r"images\[0\] must be float"),
    "image-bool": (lambda: [np.ones((3, H, W), bool)], r"images\[0\] must be float"),
    "image-0-255-floats": (
        lambda: [_image() * 255],
        r"images\[0\] must hold RGB in \[0, 1\]; got values in .*divide 0-255",
    ),
    "image-negative": (lambda: [_image() - 0.5], r"images\[0\] must hold RGB in \[0, 1\]"),
    "image-1-channel": (
        lambda: [_image()[:1]],
        r"images\[0\] must be \(3, H, W\) RGB; got shape \(1, 40, 52\).*np.repeat",
    ),
    "image-4-channels": (
        lambda: [np.concatenate([_image(), _image()[:1]])],
        r"images\[0\] .*got shape \(4, 40, 52\).*RGBA: drop the alpha channel",
    ),
    "image-hwc": (
        lambda: [_image().transpose(1, 2, 0)],
        r"images\[0\] .*got shape \(40, 52, 3\).*transpose\(2, 0, 1\)",
    ),
    "image-2d": (lambda: [_image()[0]], r"images\[0\] .*got shape \(40, 52\).*grey"),
    "image-nan": (
        lambda: [np.where(_image() > 0.9, np.nan, _image()).astype(np.float32)],
        r"images\[0\] holds NaN or infinite",
    ),
    "image-inf": (
        lambda: [np.where(_image() > 0.9, np.inf, _image()).astype(np.float32)],
        r"images\[0\] holds NaN or infinite",
    ),
    "image-zero-height": (
        lambda: [np.zeros((3, 0, W), np.float32)],
        r"images\[0\] .*got shape \(3, 0, 52\).*at least 1",
    ),
    "image-zero-width": (
        lambda: [_image(), np.zeros((3, H, 0), np.float32)],
        r"images\[1\] .*got shape \(3, 40, 0\).*at least 1",
    ),
    "image-ragged": (lambda: [[[0.0, 1.0], [0.0]]], r"images\[0\] must be a \(3, H, W\) array"),
}


@pytest.mark.parametrize("probe", sorted(IMAGE_PROBES))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_malformed_image_is_a_value_error_naming_it(model, probe, mode):
    make, message = IMAGE_PROBES[probe]
    model.train(mode == "train")
    images = make()
    targets = [_target()] * len(images) if isinstance(images, list) and images else [_target()]
    with pytest.raises(ValueError, match=message):
        model(images, targets) if mode == "train" else model(images)


@pytest.mark.parametrize("shape", [(3, 1, 1), (3, 2, 10_000), (3, 10_000, 3), (3, 1, 10_000)])
def test_any_image_of_at_least_one_pixel_runs_even_with_a_ten_thousand_pixel_side(model, shape):
    # The transform resizes first; a side that would round to 0 pixels is kept at 1.
    model.eval()
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    _check_detections(model([image]), [shape[1:]])


def test_a_float16_image_runs_in_the_models_precision(model):
    model.eval()
    _check_detections(model([_image().astype(np.float16)]), [(H, W)])


@settings(max_examples=15)
@given(
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    kind=st.sampled_from(["random", "zeros", "ones", "half"]),
    seed=st.integers(0, 2**16),
)
def test_any_finite_image_in_0_1_gives_finite_detections_inside_it(model, h, w, kind, seed):
    model.eval()
    image = {
        "random": _image(h, w, seed),
        "zeros": np.zeros((3, h, w), np.float32),
        "ones": np.ones((3, h, w), np.float32),
        "half": np.full((3, h, w), 0.5, np.float32),
    }[kind]
    _check_detections(model([image]), [(h, w)])


@settings(max_examples=25)
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4).map(tuple),
    dtype=st.sampled_from([np.float32, np.float64, np.uint8, np.int32, np.bool_, np.complex64]),
    fill=st.sampled_from([0.5, 2.0, -1.0, np.nan]),
)
def test_any_array_is_either_a_valid_image_or_a_value_error_naming_it(model, shape, dtype, fill):
    model.eval()
    with np.errstate(invalid="ignore"):
        image = np.full(shape, fill).astype(dtype)
    valid = (
        len(shape) == 3
        and shape[0] == 3
        and min(shape[1:]) >= 1
        and dtype in (np.float32, np.float64)
        and 0 <= fill <= 1
    )
    if valid:
        _check_detections(model([image]), [shape[1:]])
    else:
        with pytest.raises(ValueError, match=r"^images\[0\] "):
            model([image])


# --- targets --------------------------------------------------------------------------------

TARGET_PROBES = {
    "target-box-outside": (
        dict(boxes=np.array([[5.0, 10.0, 60.0, 30.0]], np.float32)),
        r"targets\[0\]\['boxes'\]\[0\] = \[5.0, 10.0, 60.0, 30.0\] lies outside the image "
        r"\[0, 52\] x \[0, 40\]",
    ),
    "target-box-negative": (
        dict(boxes=np.array([[-3.0, 10.0, 25.0, 30.0]], np.float32)),
        r"targets\[0\]\['boxes'\]\[0\].*lies outside the image",
    ),
    "target-x2-below-x1": (
        dict(boxes=np.array([[25.0, 10.0, 5.0, 30.0]], np.float32)),
        r"targets\[0\]\['boxes'\]\[0\].*zero or negative width or height; .*x2 > x1",
    ),
    "target-box-nan": (
        dict(boxes=np.array([[np.nan, 10.0, 25.0, 30.0]], np.float32)),
        r"targets\[0\]\['boxes'\] holds NaN",
    ),
    "target-box-not-numbers": (dict(boxes="abc"), r"targets\[0\]\['boxes'\] must be \(G, 4\)"),
    "target-box-5-columns": (
        dict(boxes=np.zeros((1, 5), np.float32)),
        r"targets\[0\]\['boxes'\] must be \(G, 4\) x1y1x2y2; got shape \(1, 5\)",
    ),
    "target-label-num-classes": (
        dict(labels=np.array([4])),
        r"targets\[0\]\['labels'\] must be in \[1, 3\] \(0 is background, num_classes=4\)",
    ),
    "target-label-background": (dict(labels=np.array([0])), r"must be in \[1, 3\]"),
    "target-label-float": (dict(labels=np.array([1.0])), r"\['labels'\] must be \(1,\) integers"),
    "target-label-count": (dict(labels=np.array([1, 2])), r"\['labels'\] must be \(1,\) integers"),
    "target-masks-wrong-size": (
        dict(masks=np.zeros((1, 20, 26), np.uint8)),
        r"targets\[0\]\['masks'\] must be \(1, 40, 52\), one full-image mask per box; got shape "
        r"\(1, 20, 26\)",
    ),
    "target-masks-not-binary": (
        dict(masks=np.full((1, H, W), 0.5, np.float32)),
        r"targets\[0\]\['masks'\] must hold 0 and 1 only",
    ),
    "target-masks-missing": (dict(masks=None), r"targets\[0\] must be a dict with 'boxes', "),
}


@pytest.mark.parametrize("probe", sorted(TARGET_PROBES))
def test_a_malformed_target_is_a_value_error_naming_the_field(model, probe):
    change, message = TARGET_PROBES[probe]
    target = {k: v for k, v in _target(**change).items() if v is not None}
    model.train()
    with pytest.raises(ValueError, match=message):
        model([_image()], [target])


def test_targets_that_are_not_one_dict_per_image_are_named(model):
    model.train()
    with pytest.raises(ValueError, match=r"targets must be a list with one dict per image \(1\)"):
        model([_image()], _target())
    with pytest.raises(ValueError, match=r"one dict per image \(1\); got 2"):
        model([_image()], [_target(), _target()])
    with pytest.raises(ValueError, match=r"needs targets"):
        model([_image()])


@pytest.mark.parametrize("as_lists", [False, True])
def test_an_image_without_objects_trains_as_background(model, as_lists):
    # torchvision: G = 0 gives finite losses, zero box regression and mask loss.
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    if as_lists:
        empty = {"boxes": [], "labels": []}
    empty["masks"] = np.zeros((0, H, W), np.uint8)
    model.train()
    model.rng = np.random.default_rng(3)
    model.zero_grad()
    losses = model([_image(), _image(seed=1)], [empty, _target()])
    assert all(np.isfinite(v) for v in losses.values())
    model.backward()
    for name, p in model.named_parameters():
        assert np.all(np.isfinite(p.grad)), name
    model.rng = np.random.default_rng(3)
    only_empty = model([_image()], [empty])
    assert only_empty["loss_box_reg"] == 0 and only_empty["loss_mask"] == 0
    assert only_empty["loss_rpn_box_reg"] == 0 and only_empty["loss_classifier"] > 0
    model.backward()
    model.zero_grad()


@settings(max_examples=20)
@given(
    box=st.lists(st.floats(-10, 70, allow_nan=False), min_size=4, max_size=4),
    label=st.integers(-1, 5),
)
def test_any_box_and_label_either_trains_to_finite_losses_or_is_named(model, box, label):
    boxes = np.array([box], np.float32)  # the model checks the boxes in float32
    x1, y1, x2, y2 = boxes[0]
    masks = np.zeros((1, H, W), np.uint8)
    target = {"boxes": boxes, "labels": np.array([label]), "masks": masks}
    valid = 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H and 1 <= label <= 3
    model.train()
    if valid:
        losses = model([_image()], [target])
        assert all(np.isfinite(v) for v in losses.values())
    else:
        with pytest.raises(ValueError, match=r"^targets\[0\]\['(boxes|labels)'\]"):
            model([_image()], [target])


PROBES = (
    sorted(IMAGE_PROBES)
    + ["ten-thousand-pixel-side", "float16-image", "any-finite-image", "any-array"]
    + sorted(TARGET_PROBES)
    + ["targets-not-one-dict-per-image", "no-objects", "any-box-and-label"]
)
