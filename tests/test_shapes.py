"""The synthetic shapes dataset: rasterisation, the spec (docs/architecture.md, Data),
determinism."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymaskrcnn.data.shapes import (
    MIN_COLOUR_DISTANCE,
    MIN_VISIBLE_FRACTION,
    OVERLAP_IOU,
    Shape,
    ShapesDataset,
    _corners,
    _iou,
    _outline_box,
    masks_to_boxes,
    rasterise,
    render,
)

GREY = (0.5, 0.5, 0.5)

# --- hand-computed cases ---------------------------------------------------------------


def test_an_upright_square_covers_the_pixels_whose_centres_lie_inside():
    # Centre (10, 10), half-size 3: the square [7, 13] x [7, 13] holds the centres
    # 7.5 ... 12.5, i.e. columns and rows 7 to 12.
    mask = rasterise(Shape(1, (10.0, 10.0), 3.0, 0.0, GREY), (20, 20))
    expected = np.zeros((20, 20), bool)
    expected[7:13, 7:13] = True
    np.testing.assert_array_equal(mask, expected)


def test_a_circle_holds_exactly_the_pixel_centres_within_its_radius():
    mask = rasterise(Shape(2, (8.0, 8.0), 2.0, 0.0, GREY), (16, 16))
    # Centres at distance <= 2 from (8, 8): (7.5|8.5, 6.5..9.5) and (6.5|9.5, 7.5|8.5).
    expected = np.zeros((16, 16), bool)
    expected[6:10, 7:9] = True
    expected[7:9, 6:10] = True
    np.testing.assert_array_equal(mask, expected)


def test_an_upright_triangle_has_its_apex_up_and_its_base_down():
    mask = rasterise(Shape(3, (16.0, 16.0), 10.0, 0.0, GREY), (32, 32))
    widths = mask.sum(axis=1)
    assert widths[6] < widths[16] < widths[25]
    assert widths[5] == 0 and widths[26] == 0  # height 2 * 10: rows 6 to 25
    np.testing.assert_array_equal(mask, mask[:, ::-1])  # symmetric about x = 16


def test_a_square_rotated_by_a_quarter_turn_is_the_same_square():
    upright = rasterise(Shape(1, (16.0, 16.0), 6.0, 0.0, GREY), (32, 32))
    turned = rasterise(Shape(1, (16.0, 16.0), 6.0, np.pi / 2, GREY), (32, 32))
    np.testing.assert_array_equal(upright, turned)


def test_a_triangle_rotated_by_a_half_turn_points_down():
    up = rasterise(Shape(3, (16.0, 16.0), 10.0, 0.0, GREY), (32, 32))
    down = rasterise(Shape(3, (16.0, 16.0), 10.0, np.pi, GREY), (32, 32))
    np.testing.assert_array_equal(down, up[::-1])


def _inside_anywhere(shape, image_size):
    """The definition, tested on every pixel of the grid: centre inside the outline."""
    ys, xs = np.mgrid[0 : image_size[0], 0 : image_size[1]] + 0.5
    cx, cy = shape.centre
    if shape.label == 2:
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= shape.half_size**2
    corners = _corners(shape)
    inside = np.ones(image_size, bool)
    for (x0, y0), (x1, y1) in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) <= 0
    return inside


@given(
    label=st.sampled_from([1, 2, 3]),
    cx=st.floats(-40, 80),
    cy=st.floats(-40, 80),
    half_size=st.floats(0.01, 60),
    angle=st.floats(0, 2 * np.pi),
    size=st.tuples(st.integers(1, 48), st.integers(1, 48)),
)
def test_rasterising_near_the_outline_gives_the_pixels_of_the_whole_grid(
    label, cx, cy, half_size, angle, size
):
    # rasterise tests only the window around the outline's box; shapes partly or wholly
    # outside the image, tiny ones and ones larger than the image included.
    shape = Shape(label, (cx, cy), half_size, angle if label != 2 else 0.0, GREY)
    np.testing.assert_array_equal(rasterise(shape, size), _inside_anywhere(shape, size))


@pytest.mark.parametrize("label", [1, 2, 3])
@pytest.mark.parametrize(
    "centre, half_size, angle",
    [
        ((np.inf, 5.0), 3.0, 0.0),
        ((5.0, np.nan), 3.0, 0.0),
        ((5.0, 5.0), np.inf, 0.0),
        ((5.0, 5.0), np.nan, 0.0),
        ((5.0, 5.0), 3.0, np.nan),
        ((-np.inf, np.inf), 1e150, 0.0),
        ((5.0, 5.0), 1e150, 1.0),
    ],
)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_shape_with_infinite_or_nan_numbers_gives_the_pixels_of_the_whole_grid(
    label, centre, half_size, angle
):
    shape = Shape(label, centre, half_size, angle, GREY)
    np.testing.assert_array_equal(rasterise(shape, (9, 11)), _inside_anywhere(shape, (9, 11)))


def test_masks_to_boxes_gives_one_past_the_last_pixel():
    masks = np.zeros((2, 6, 8), np.uint8)
    masks[0, 1:3, 2:5] = 1
    masks[1, 5, 7] = 1
    np.testing.assert_array_equal(masks_to_boxes(masks), [[2, 1, 5, 3], [7, 5, 8, 6]])


def test_an_empty_mask_has_no_box():
    with pytest.raises(ValueError, match=r"masks\[1\] is empty"):
        masks_to_boxes(np.array([[[1]], [[0]]]))


def test_a_later_shape_hides_the_pixels_of_an_earlier_one():
    bottom = Shape(1, (10.0, 10.0), 4.0, 0.0, (1.0, 0.0, 0.0))
    top = Shape(1, (14.0, 10.0), 4.0, 0.0, (0.0, 0.0, 1.0))
    image, target = render((0.0, 0.0, 0.0), [bottom, top], (20, 24))
    masks = target["masks"]
    assert masks[0].sum() == 4 * 8 and masks[1].sum() == 8 * 8  # bottom keeps x in [6, 10)
    np.testing.assert_array_equal(target["boxes"], [[6, 6, 10, 14], [10, 6, 18, 14]])
    np.testing.assert_array_equal(image[:, 10, 12], [0, 0, 1])  # the top colour wins


def test_the_class_names_follow_the_labels():
    assert ShapesDataset.CLASSES == ("background", "square", "circle", "triangle")


# --- determinism -------------------------------------------------------------------


def _assert_same_item(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    for key in ("boxes", "labels", "masks"):
        np.testing.assert_array_equal(a[1][key], b[1][key])


def test_the_same_seed_gives_the_same_images():
    _assert_same_item(ShapesDataset(5, seed=7)[3], ShapesDataset(5, seed=7)[3])


def test_an_image_does_not_depend_on_the_order_of_access():
    ds = ShapesDataset(6, seed=1)
    later = ds[4]
    [ds[i] for i in range(6)]
    _assert_same_item(ShapesDataset(6, seed=1)[4], later)
    _assert_same_item(ds[4], later)


def test_an_image_does_not_depend_on_the_length_of_the_dataset():
    _assert_same_item(ShapesDataset(3, seed=2)[2], ShapesDataset(100, seed=2)[2])


def test_different_seeds_give_different_images():
    assert not np.array_equal(ShapesDataset(1, seed=0)[0][0], ShapesDataset(1, seed=1)[0][0])


def test_describe_then_render_redraws_the_item():
    ds = ShapesDataset(4, seed=3)
    _assert_same_item(render(*ds.describe(2), ds.image_size), ds[2])


def test_negative_indices_count_from_the_end():
    ds = ShapesDataset(4, seed=3)
    _assert_same_item(ds[-1], ds[3])


# --- the spec, over random seeds, indices and sizes --------------------------------

items = st.builds(
    lambda seed, index, size, rotate: (ShapesDataset(index + 1, size, seed, rotate), index),
    seed=st.integers(0, 2**31),
    index=st.integers(0, 10_000),
    size=st.sampled_from([32, 64, 128, (96, 160), (200, 120)]),
    rotate=st.booleans(),
)


@given(item=items)
def test_an_item_has_the_documented_shapes_and_dtypes(item):
    ds, i = item
    image, target = ds[i]
    height, width = ds.image_size
    g = len(target["labels"])
    assert 1 <= g <= 4
    assert image.shape == (3, height, width) and image.dtype == np.float32
    assert target["boxes"].shape == (g, 4) and target["boxes"].dtype == np.float32
    assert target["labels"].dtype == np.int64 and set(target["labels"]) <= {1, 2, 3}
    assert target["masks"].shape == (g, height, width) and target["masks"].dtype == np.uint8
    assert set(np.unique(target["masks"])) <= {0, 1}
    assert image.min() >= 0.0 and image.max() <= 1.0


@given(item=items)
def test_boxes_are_the_tight_boxes_of_the_visible_masks(item):
    ds, i = item
    _, target = ds[i]
    np.testing.assert_array_equal(target["boxes"], masks_to_boxes(target["masks"]))


@given(item=items)
def test_masks_are_disjoint_and_each_masked_pixel_shows_its_shapes_colour(item):
    ds, i = item
    image, target = ds[i]
    background, shapes = ds.describe(i)
    masks = target["masks"].astype(bool)
    assert masks.sum(axis=0).max() <= 1
    for shape, mask in zip(shapes, masks, strict=True):
        np.testing.assert_array_equal(
            image[:, mask].T, np.broadcast_to(np.float32(shape.colour), (mask.sum(), 3))
        )
    unmasked = ~masks.any(axis=0)
    np.testing.assert_array_equal(
        image[:, unmasked].T, np.broadcast_to(np.float32(background), (unmasked.sum(), 3))
    )


@given(item=items)
def test_colours_are_8_bit_and_stand_out_from_the_background_and_earlier_shapes(item):
    ds, i = item
    background, shapes = ds.describe(i)
    colours = [np.array(background)] + [np.array(s.colour) for s in shapes]
    for c in colours:
        np.testing.assert_allclose(c * 255, np.round(c * 255), atol=1e-9)
    for k in range(1, len(colours)):
        for j in range(k):
            assert np.linalg.norm(colours[k] - colours[j]) >= MIN_COLOUR_DISTANCE


@given(item=items)
def test_sizes_and_centres_follow_the_spec_scaled_with_the_image(item):
    ds, i = item
    height, width = ds.image_size
    scale = min(height, width) / 128
    for shape in ds.describe(i)[1]:
        assert 20 * scale <= shape.half_size <= 31 * scale
        x, y = shape.centre
        assert 20 * scale <= x <= width - 20 * scale
        assert 20 * scale <= y <= height - 20 * scale


@given(item=items)
def test_no_two_kept_shapes_overlap_above_the_iou_threshold(item):
    ds, i = item
    boxes = np.array([_outline_box(s) for s in ds.describe(i)[1]])
    for k in range(1, len(boxes)):
        assert _iou(boxes[k], boxes[:k]).max() <= OVERLAP_IOU


@given(item=items)
def test_every_kept_shape_keeps_enough_of_itself_visible(item):
    ds, i = item
    _, shapes = ds.describe(i)
    _, target = ds[i]
    for shape, mask in zip(shapes, target["masks"], strict=True):
        assert mask.sum() >= MIN_VISIBLE_FRACTION * rasterise(shape, ds.image_size).sum()


@given(seed=st.integers(0, 2**31))
def test_without_rotation_squares_and_triangles_stand_upright(seed):
    ds = ShapesDataset(1, seed=seed, rotate=False)
    assert all(s.angle == 0.0 for s in ds.describe(0)[1])


def test_all_three_classes_and_one_to_four_shapes_occur():
    ds = ShapesDataset(60, seed=0)
    labels = np.concatenate([ds[i][1]["labels"] for i in range(len(ds))])
    counts = {len(ds[i][1]["labels"]) for i in range(len(ds))}
    assert set(labels) == {1, 2, 3}
    assert counts == {1, 2, 3, 4}


# --- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("num_images", [0, -3, 2.5, "4"])
def test_the_number_of_images_must_be_a_positive_int(num_images):
    with pytest.raises(ValueError, match="num_images must be a positive int"):
        ShapesDataset(num_images)


@pytest.mark.parametrize("size", [16, (128,), (64, 64, 3), (31, 128), "big"])
def test_the_image_size_must_be_an_int_or_a_pair_of_at_least_32(size):
    with pytest.raises(ValueError, match="image_size must be"):
        ShapesDataset(2, image_size=size)


def test_an_index_past_the_end_is_an_index_error():
    with pytest.raises(IndexError, match="image index 3 out of range for 3 images"):
        ShapesDataset(3)[3]


def test_iterating_over_the_dataset_stops_at_its_length():
    assert len(list(ShapesDataset(3))) == 3
