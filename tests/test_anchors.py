"""anchors.py: cell anchors, strides, tiling order, and parity with torchvision."""

import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymaskrcnn.anchors import AnchorGenerator, cell_anchors

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "anchors.npz"
TORCHVISION_SIZES = {
    "800x1216": ((800, 1216), [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]),
    "333x517": ((333, 517), [(84, 130), (42, 65), (21, 33), (11, 17), (6, 9)]),
}

# --- hand-computed cases ---------------------------------------------------------------


def test_size_128_ratio_half_is_182_by_90_not_181_by_91():
    # w = 128 / sqrt(0.5) = 181.02, h = 128 * sqrt(0.5) = 90.51; the half-extents 90.51
    # and 45.25 round to 91 and 45.
    np.testing.assert_array_equal(cell_anchors((128,), (0.5,)), [[-91, -45, 91, 45]])


def test_the_three_p4_anchors_are_182x90_128x128_and_90x182():
    cells = cell_anchors((128,), (0.5, 1.0, 2.0))
    widths = cells[:, 2] - cells[:, 0]
    heights = cells[:, 3] - cells[:, 1]
    np.testing.assert_array_equal(
        np.stack([widths, heights], 1), [[182, 90], [128, 128], [90, 182]]
    )


def test_cell_anchors_put_ratios_outer_and_sizes_inner():
    cells = cell_anchors((32, 64), (0.5, 2.0))
    np.testing.assert_array_equal(
        cells, [[-23, -11, 23, 11], [-45, -23, 45, 23], [-11, -23, 11, 23], [-23, -45, 23, 45]]
    )
    assert cells.dtype == np.float32


def test_anchors_tile_row_by_row_from_the_cell_corners():
    gen = AnchorGenerator(sizes=((4,),), aspect_ratios=((1.0,),))
    (anchors,) = gen.generate((8, 12), [(2, 3)])  # stride 4 on both axes
    corners = anchors[:, :2] + 2
    np.testing.assert_array_equal(corners, [[0, 0], [4, 0], [8, 0], [0, 4], [4, 4], [8, 4]])


def test_the_stride_is_the_integer_division_of_image_by_feature_size():
    gen = AnchorGenerator()
    strides = gen.strides((333, 517), TORCHVISION_SIZES["333x517"][1])
    assert strides == [(3, 3), (7, 7), (15, 15), (30, 30), (55, 57)]


def test_default_generator_has_three_anchors_per_location_on_five_levels():
    assert AnchorGenerator().num_anchors_per_location() == [3] * 5


def test_calling_the_generator_concatenates_the_levels():
    gen = AnchorGenerator()
    image, sizes = TORCHVISION_SIZES["333x517"]
    levels = gen.generate(image, sizes)
    np.testing.assert_array_equal(gen(image, sizes), np.concatenate(levels))
    assert [len(a) for a in levels] == [h * w * 3 for h, w in sizes]


# --- bad input -------------------------------------------------------------------------


def test_sizes_and_ratios_must_have_the_same_number_of_levels():
    with pytest.raises(ValueError, match="one tuple per pyramid level; got 2 and 1"):
        AnchorGenerator(sizes=((32,), (64,)), aspect_ratios=((1.0,),))


def test_a_negative_size_is_rejected():
    with pytest.raises(ValueError, match="sizes must be positive"):
        AnchorGenerator(sizes=((-32,),), aspect_ratios=((1.0,),))


def test_feature_sizes_must_match_the_levels():
    with pytest.raises(ValueError, match=r"one \(height, width\) per level \(5\); got 2"):
        AnchorGenerator().generate((64, 64), [(16, 16), (8, 8)])


def test_a_feature_map_larger_than_the_image_is_rejected():
    gen = AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0,),))
    with pytest.raises(ValueError, match="larger than image_size"):
        gen.generate((16, 16), [(32, 32)])


def test_a_fractional_image_size_is_rejected():
    with pytest.raises(ValueError, match="image_size must be"):
        AnchorGenerator().strides((100.5, 100), [(4, 4)] * 5)


# --- properties ------------------------------------------------------------------------


@given(
    size=st.integers(1, 600),
    ratio=st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0]),
)
def test_cell_anchors_are_centred_with_area_close_to_size_squared(size, ratio):
    (cell,) = cell_anchors((size,), (ratio,))
    np.testing.assert_array_equal(cell[:2], -cell[2:])
    w, h = cell[2] - cell[0], cell[3] - cell[1]
    # Each half-extent moves by at most 0.5 when rounded.
    exact_w, exact_h = size / np.sqrt(ratio), size * np.sqrt(ratio)
    assert abs(w - exact_w) <= 1 + 1e-3 and abs(h - exact_h) <= 1 + 1e-3


@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    stride=st.integers(1, 9),
    extra=st.integers(0, 3),
)
def test_every_location_gets_its_anchors_in_order(h, w, stride, extra):
    gen = AnchorGenerator(sizes=((16, 32),), aspect_ratios=((0.5, 1.0),))
    image = (h * stride + extra, w * stride + extra)
    (anchors,) = gen.generate(image, [(h, w)])
    grid = anchors.reshape(h, w, 4, 4) - gen.cell_anchors[0]
    ys, xs = np.meshgrid(
        np.arange(h) * (image[0] // h), np.arange(w) * (image[1] // w), indexing="ij"
    )
    np.testing.assert_array_equal(grid[..., 0], np.repeat(xs[..., None], 4, axis=2))
    np.testing.assert_array_equal(grid[..., 1], np.repeat(ys[..., None], 4, axis=2))


# --- torchvision parity ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tv():
    return dict(np.load(FIXTURES))


def test_cell_anchors_equal_torchvision_exactly(tv):
    np.testing.assert_array_equal(np.stack(AnchorGenerator().cell_anchors), tv["cell_anchors"])


@pytest.mark.parametrize("case", sorted(TORCHVISION_SIZES))
def test_anchors_equal_torchvision_exactly(tv, case):
    image, sizes = TORCHVISION_SIZES[case]
    levels = AnchorGenerator().generate(image, sizes)
    assert sum(len(a) for a in levels) == tv[f"{case}_total"]
    for level, anchors in enumerate(levels, start=2):
        assert anchors.dtype == np.float32
        rows = tv[f"{case}_p{level}_rows"]
        np.testing.assert_array_equal(anchors[rows], tv[f"{case}_p{level}_anchors"])
        np.testing.assert_array_equal(anchors.astype(np.float64).sum(0), tv[f"{case}_p{level}_sum"])
