"""Batching and horizontal flips: hand cases, then properties on the shapes dataset."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymaskrcnn.data import ShapesDataset, flip_horizontal, iterate_batches
from tinymaskrcnn.data.shapes import masks_to_boxes

# --- horizontal flip ---------------------------------------------------------------


def test_a_flip_mirrors_pixels_masks_and_boxes():
    image = np.zeros((3, 2, 5), np.float32)
    image[:, :, 0] = 1.0
    masks = np.zeros((1, 2, 5), np.uint8)
    masks[0, :, 0:2] = 1
    target = {
        "boxes": np.array([[0, 0, 2, 2]], np.float32),
        "labels": np.array([1]),
        "masks": masks,
    }
    flipped_image, flipped = flip_horizontal(image, target)
    np.testing.assert_array_equal(flipped_image[0, 0], [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(flipped["masks"][0, 0], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(flipped["boxes"], [[3, 0, 5, 2]])
    np.testing.assert_array_equal(target["boxes"], [[0, 0, 2, 2]])  # input untouched


@given(seed=st.integers(0, 2**31), index=st.integers(0, 100))
def test_flipped_boxes_are_the_tight_boxes_of_the_flipped_masks(seed, index):
    image, target = ShapesDataset(index + 1, image_size=(40, 56), seed=seed)[index]
    _, flipped = flip_horizontal(image, target)
    np.testing.assert_array_equal(flipped["boxes"], masks_to_boxes(flipped["masks"]))


@given(seed=st.integers(0, 2**31))
def test_flipping_twice_gives_back_the_original(seed):
    image, target = ShapesDataset(1, image_size=40, seed=seed)[0]
    image2, target2 = flip_horizontal(*flip_horizontal(image, target))
    np.testing.assert_array_equal(image2, image)
    for key in ("boxes", "labels", "masks"):
        np.testing.assert_array_equal(target2[key], target[key])


# --- batching ----------------------------------------------------------------------


@given(n=st.integers(1, 9), batch_size=st.integers(1, 4), shuffle=st.booleans())
def test_an_epoch_visits_every_image_once_in_batches_of_the_given_size(n, batch_size, shuffle):
    ds = ShapesDataset(n, image_size=32, seed=4)
    batches = list(iterate_batches(ds, batch_size, np.random.default_rng(0), shuffle, hflip=False))
    assert [len(b[0]) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    seen = [img for images, _ in batches for img in images]
    assert len(seen) == n
    for i in range(n):
        assert sum(np.array_equal(ds[i][0], img) for img in seen) >= 1


def test_drop_last_leaves_out_the_short_batch():
    ds = ShapesDataset(5, image_size=32)
    batches = list(iterate_batches(ds, 2, np.random.default_rng(0), drop_last=True))
    assert [len(images) for images, _ in batches] == [2, 2]


def test_without_shuffling_or_flipping_batches_are_the_images_in_order():
    ds = ShapesDataset(3, image_size=32)
    ((images, targets),) = list(iterate_batches(ds, 3, np.random.default_rng(0), False, False))
    for i in range(3):
        np.testing.assert_array_equal(images[i], ds[i][0])
        np.testing.assert_array_equal(targets[i]["boxes"], ds[i][1]["boxes"])


def test_flips_happen_to_about_half_the_images_and_follow_the_rng():
    ds = ShapesDataset(40, image_size=32)

    def flipped(seed):
        batches = iterate_batches(ds, 8, np.random.default_rng(seed), shuffle=False)
        images = [img for b, _ in batches for img in b]
        return [not np.array_equal(img, ds[i][0]) for i, img in enumerate(images)]

    assert 10 <= sum(flipped(0)) <= 30
    assert flipped(0) == flipped(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"rng": 0}, "rng must be a numpy.random.Generator"),
        ({"dataset": []}, "dataset is empty"),
    ],
)
def test_bad_batching_arguments_are_named(kwargs, message):
    args = {
        "dataset": ShapesDataset(2, image_size=32),
        "batch_size": 2,
        "rng": np.random.default_rng(0),
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        next(iterate_batches(**args))
