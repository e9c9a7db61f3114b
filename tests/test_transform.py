import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymaskrcnn.config import MaskRCNNConfig
from tinymaskrcnn.transform import (
    Transform,
    batch_images,
    check_images,
    check_targets,
    resize_bilinear,
    resize_nearest,
    resized_size,
)

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "transform.npz"
SETTINGS = {"up": (64, 80), "down": (24, 30)}


def small_target(h=20, w=30, boxes=((2.0, 3.0, 12.0, 15.0),), labels=(1,)):
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    masks = np.zeros((len(boxes), h, w), np.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int), strict=True):
        m[y1:y2, x1:x2] = 1
    return {"boxes": boxes, "labels": np.array(labels, np.int64), "masks": masks}


# --- hand-computed cases ------------------------------------------------------------------


def test_resized_size_brings_the_short_side_to_min_size():
    assert resized_size(480, 640, 800, 1333) == (800, 1066)


def test_resized_size_is_capped_by_max_size_on_the_long_side():
    # 800/100 = 8 would make the long side 3200 > 1333: the scale is 1333/400.
    assert resized_size(100, 400, 800, 1333) == (333, 1333)
    assert resized_size(100, 200, 800, 1333) == (666, 1333)


def test_bilinear_resize_of_a_constant_image_is_constant():
    image = np.full((3, 7, 9), 0.25, np.float32)
    np.testing.assert_allclose(resize_bilinear(image, (13, 4)), 0.25, rtol=1e-6)


def test_bilinear_upsampling_by_two_uses_quarter_weights():
    # Half-pixel centres: output 1 of 4 sits at input 0.25 -> 0.75 * x0 + 0.25 * x1.
    row = np.array([[[0.0, 4.0]]])
    np.testing.assert_allclose(resize_bilinear(row, (1, 4))[0, 0], [0.0, 1.0, 3.0, 4.0])


def test_nearest_resize_repeats_pixels_when_doubling():
    masks = np.array([[[1, 0], [0, 1]]], np.uint8)
    expected = np.kron(masks[0], np.ones((2, 2), np.uint8))
    np.testing.assert_array_equal(resize_nearest(masks, (4, 4))[0], expected)


def test_batch_is_padded_with_zeros_to_a_multiple_of_32():
    images = [np.ones((3, 40, 33), np.float32), np.ones((3, 20, 70), np.float32)]
    batch = batch_images(images, 32)
    assert batch.shape == (2, 3, 64, 96)
    assert batch[0, :, 40:].sum() == 0 and batch[0, :, :, 33:].sum() == 0
    assert batch[1, :, :20, :70].min() == 1


def test_transform_scales_boxes_by_the_resize_ratios():
    cfg = MaskRCNNConfig.shapes(min_size=40, max_size=1000)
    _, sizes, targets = Transform(cfg)([np.zeros((3, 20, 30), np.float32)], [small_target()])
    assert sizes == [(40, 60)]
    np.testing.assert_allclose(targets[0]["boxes"], [[4, 6, 24, 30]])
    assert targets[0]["masks"].shape == (1, 40, 60)


def test_postprocess_maps_boxes_back_to_the_original_image():
    cfg = MaskRCNNConfig.shapes(min_size=40, max_size=1000)
    tr = Transform(cfg)
    dets = tr.postprocess(
        [{"boxes": np.array([[4, 6, 24, 30]], np.float32)}], [(40, 60)], [(20, 30)]
    )
    np.testing.assert_allclose(dets[0]["boxes"], [[2, 3, 12, 15]])


def test_an_image_with_no_objects_is_a_valid_target():
    cfg = MaskRCNNConfig.shapes()
    empty = {
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros(0, np.int64),
        "masks": np.zeros((0, 20, 30), np.uint8),
    }
    _, _, targets = Transform(cfg)([np.zeros((3, 20, 30), np.float32)], [empty])
    assert targets[0]["boxes"].shape == (0, 4) and targets[0]["masks"].shape == (0, 85, 128)


# --- bad input: the error names the image and the field ---------------------------------------


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((1, 20, 30), np.float32), r"images\[1\] must be \(3, H, W\) RGB; got shape"),
        (np.zeros((20, 30), np.float32), r"images\[1\] must be \(3, H, W\)"),
        (np.full((3, 4, 4), np.nan, np.float32), r"images\[1\] holds NaN"),
        (np.zeros((3, 4, 4), np.uint8), r"images\[1\] must be float"),
    ],
)
def test_a_bad_image_is_named_by_its_index(image, message):
    with pytest.raises(ValueError, match=message):
        check_images([np.zeros((3, 4, 4), np.float32), image])


def test_an_empty_image_list_is_a_clear_error():
    with pytest.raises(ValueError, match="non-empty list"):
        check_images([])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(boxes=[[2.0, 3.0, 40.0, 15.0]]), r"targets\[1\]\['boxes'\]\[0\].*outside the image"),
        (dict(boxes=[[2.0, 3.0, 2.0, 15.0]]), r"targets\[1\]\['boxes'\]\[0\].*zero or negative"),
        (dict(labels=[4]), r"targets\[1\]\['labels'\] must be in \[1, 3\]"),
        (dict(labels=[0]), r"targets\[1\]\['labels'\] must be in \[1, 3\]"),
        (
            dict(masks=np.zeros((1, 10, 30), np.uint8)),
            r"targets\[1\]\['masks'\] must be \(1, 20, 30\)",
        ),
        (dict(boxes=np.zeros((1, 3))), r"targets\[1\]\['boxes'\] must be \(G, 4\)"),
        (dict(boxes=[[np.nan, 3.0, 4.0, 15.0]]), r"targets\[1\]\['boxes'\] holds NaN"),
    ],
)
def test_a_bad_target_field_is_named_with_its_image(change, message):
    bad = {**small_target(), **{k: np.asarray(v) for k, v in change.items()}}
    with pytest.raises(ValueError, match=message):
        check_targets([small_target(), bad], [(20, 30), (20, 30)], num_classes=4)


# --- properties ----------------------------------------------------------------------------


@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    min_size=st.integers(8, 200),
    extra=st.integers(0, 200),
)
def test_the_resized_image_fits_min_and_max_size(h, w, min_size, extra):
    max_size = min_size + extra
    rh, rw = resized_size(h, w, min_size, max_size)
    assert max(rh, rw) <= max_size
    assert min(rh, rw) <= min_size
    # one side reaches its bound (up to the floor)
    assert min(rh, rw) >= min_size - 1 or max(rh, rw) >= max_size - 1


@given(h=st.integers(1, 12), w=st.integers(1, 12), oh=st.integers(1, 20), ow=st.integers(1, 20))
def test_bilinear_resize_stays_within_the_input_range(h, w, oh, ow):
    image = np.random.default_rng(h * 100 + w).uniform(-1, 1, (2, h, w))
    out = resize_bilinear(image, (oh, ow))
    assert out.shape == (2, oh, ow)
    assert out.min() >= image.min() - 1e-12 and out.max() <= image.max() + 1e-12


# --- parity with torchvision's GeneralizedRCNNTransform (committed fixture) ---------------------


@pytest.fixture(scope="module")
def fx():
    return np.load(FIXTURE)


def fixture_inputs(fx):
    images = [fx[f"image{i}"] for i in range(2)]
    targets = [{k: fx[f"{k}{i}"] for k in ("boxes", "labels", "masks")} for i in range(2)]
    return images, targets


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_batch_equals_torchvisions_transform(fx, name):
    images, targets = fixture_inputs(fx)
    min_size, max_size = SETTINGS[name]
    tr = Transform(MaskRCNNConfig(min_size=min_size, max_size=max_size))
    batch, sizes, new_targets = tr(images, targets)
    assert sizes == [tuple(s) for s in fx[f"{name}_image_sizes"]]
    # float32 rounding of the source coordinate differs from torch by ~1 ulp at x ~ 50
    np.testing.assert_allclose(batch, fx[f"{name}_batch"], atol=1e-5)
    for i, t in enumerate(new_targets):
        np.testing.assert_allclose(t["boxes"], fx[f"{name}_boxes{i}"], rtol=1e-6)
        np.testing.assert_array_equal(t["masks"], fx[f"{name}_masks{i}"])


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_postprocess_equals_torchvisions(fx, name):
    images, targets = fixture_inputs(fx)
    min_size, max_size = SETTINGS[name]
    tr = Transform(MaskRCNNConfig(min_size=min_size, max_size=max_size))
    _, sizes, new_targets = tr(images, targets)
    back = tr.postprocess([{"boxes": t["boxes"]} for t in new_targets], sizes, [(37, 53), (50, 41)])
    for i, det in enumerate(back):
        np.testing.assert_allclose(det["boxes"], fx[f"{name}_back{i}"], rtol=1e-6)


@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from([np.float32, np.float64, np.float16]),
    st.integers(0, 2**16),
)
def test_resizing_to_its_own_size_is_the_identity_the_transform_skips(h, w, dtype, seed):
    # Transform hands an image already at its size on without resizing it; that is only
    # right because the resize would return the very same values, in its own dtype rule.
    image = np.random.default_rng(seed).random((3, h, w)).astype(dtype)
    resized = resize_bilinear(image, (h, w))
    np.testing.assert_array_equal(resized, image.astype(resized.dtype))
    short, long = min(h, w), max(h, w)
    transform = Transform(MaskRCNNConfig.shapes(min_size=short, max_size=long))
    batch, sizes, _ = transform([image])
    assert sizes == [(h, w)]
    mean = np.asarray(transform.image_mean, image.dtype)[:, None, None]
    std = np.asarray(transform.image_std, image.dtype)[:, None, None]
    expected = resize_bilinear((image - mean) / std, (h, w))
    assert batch.dtype == expected.dtype
    np.testing.assert_array_equal(batch[0, :, :h, :w], expected)
