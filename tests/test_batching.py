"""Batching and horizontal flips: hand cases, then properties on the shapes dataset."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tinymaskrcnn.data import ShapesDataset, flip_horizontal
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


def test_an_epoch_is_drawn_once_and_kept_read_only():
    from tinymaskrcnn.data.batching import _epoch, examples_at

    dataset = ShapesDataset(10, image_size=40, seed=2)
    _epoch.cache_clear()
    first = examples_at(dataset, [12, 13, 19, 20], seed=5)  # epochs 1 and 2
    order, flips = _epoch(5, 1, 10)
    assert not order.flags.writeable and not flips.flags.writeable
    rng = np.random.default_rng([5, 1])
    np.testing.assert_array_equal(order, rng.permutation(10))
    np.testing.assert_array_equal(flips, rng.random(10) < 0.5)
    # Drawn again after other seeds and epochs were kept: the same images.
    examples_at(dataset, [0, 35, 41], seed=6)
    again = examples_at(dataset, [12, 13, 19, 20], seed=5)
    for a, b in zip(
        first[0] + [t["masks"] for t in first[1]],
        again[0] + [t["masks"] for t in again[1]],
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
