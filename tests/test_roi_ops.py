"""roi_ops/: RoIPool, RoIAlign, crop_and_resize and MultiScaleRoIAlign (the reference).

Hand-computed cases first (a 5x5 arange map, the 8x8 RoIPool example of tutorial 04),
then invariants as hypothesis properties, float64 central-difference checks of both
backwards, and torchvision parity through the committed fixtures (on every backend).
"""

import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymaskrcnn import nn
from tinymaskrcnn.kernels import use_backend
from tinymaskrcnn.roi_ops import (
    MultiScaleRoI,
    MultiScaleRoIAlign,
    bilinear_neighbours,
    crop_and_resize,
    roi_align,
    roi_align_backward,
    roi_align_sampling_points,
    roi_pool,
    roi_pool_backward,
)

FIXTURES = np.load(pathlib.Path(__file__).parent / "fixtures" / "roi_ops.npz")

# value = 5 y + x: bilinear interpolation reproduces it exactly inside the map.
ARANGE = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)

# The 8x8 map of tutorial 04 and its RoI (inclusive corners, x 0..6, y 3..7).
MAP8 = np.array(
    [
        [0.88, 0.44, 0.14, 0.16, 0.37, 0.77, 0.96, 0.27],
        [0.19, 0.45, 0.57, 0.16, 0.63, 0.29, 0.71, 0.70],
        [0.66, 0.26, 0.82, 0.64, 0.54, 0.73, 0.59, 0.26],
        [0.85, 0.34, 0.76, 0.84, 0.29, 0.75, 0.62, 0.25],
        [0.32, 0.74, 0.21, 0.39, 0.34, 0.03, 0.33, 0.48],
        [0.20, 0.14, 0.16, 0.13, 0.73, 0.65, 0.96, 0.32],
        [0.19, 0.69, 0.09, 0.86, 0.88, 0.07, 0.01, 0.48],
        [0.83, 0.24, 0.97, 0.04, 0.24, 0.35, 0.50, 0.91],
    ]
)[None, None]
ROI8 = np.array([[0, 0, 3, 6, 7]], np.float64)


def rois_within(draw, n_images, height, width, max_k=6, margin=0.0):
    """RoIs whose corners lie in [margin, size - margin] (input pixels, scale 1)."""
    k = draw(st.integers(1, max_k))
    coord = st.floats(margin, 1.0, allow_nan=False)
    rows = []
    for _ in range(k):
        x = sorted(draw(coord) * (width - 2 * margin) + margin for _ in range(2))
        y = sorted(draw(coord) * (height - 2 * margin) + margin for _ in range(2))
        rows.append([draw(st.integers(0, n_images - 1)), x[0], y[0], x[1], y[1]])
    return np.array(rows, np.float64)


# --- hand-computed answers ---------------------------------------------------------


def test_roi_align_on_the_arange_map_averages_four_samples_per_bin():
    # Bins of 2x2 cells, samples at 0.5 and 1.5 of each: the mean is the bin's centre.
    out = roi_align(ARANGE, [[0, 0, 0, 4, 4]], 2, sampling_ratio=2)
    np.testing.assert_allclose(out[0, 0], [[6, 8], [16, 18]])


def test_aligned_roi_align_shifts_every_sample_by_half_a_pixel():
    out = roi_align(ARANGE, [[0, 0, 0, 4, 4]], 2, sampling_ratio=2, aligned=True)
    np.testing.assert_allclose(out[0, 0], [[6 - 3, 8 - 3], [16 - 3, 18 - 3]])


def test_a_single_sample_reads_the_bilinear_value_between_four_cells():
    out = roi_align(ARANGE, [[0, 1, 1, 2, 2]], 1, sampling_ratio=1)
    np.testing.assert_allclose(out[0, 0, 0, 0], 5 * 1.5 + 1.5)


def test_an_aligned_roi_covering_exactly_one_cell_returns_that_cell():
    features = np.random.default_rng(0).normal(size=(1, 2, 5, 6))
    out = roi_align(features, [[0, 3, 2, 4, 3]], 1, sampling_ratio=1, aligned=True)
    np.testing.assert_allclose(out[0, :, 0, 0], features[0, :, 2, 3])


def test_roi_pool_of_a_one_cell_roi_is_that_cell_and_its_index():
    features = np.random.default_rng(1).normal(size=(1, 2, 5, 6))
    out, argmax = roi_pool(features, [[0, 3, 2, 3, 2]], 1)
    np.testing.assert_array_equal(out[0, :, 0, 0], features[0, :, 2, 3])
    np.testing.assert_array_equal(argmax[0, :, 0, 0], [2 * 6 + 3] * 2)


def test_roi_pool_on_the_arange_map_takes_overlapping_bins_of_three_cells():
    # 5 cells / 2 bins = 2.5: rows [0, 3) and [2, 5), floor of start, ceil of end.
    out, argmax = roi_pool(ARANGE, [[0, 0, 0, 4, 4]], 2)
    np.testing.assert_array_equal(out[0, 0], [[12, 14], [22, 24]])
    np.testing.assert_array_equal(argmax[0, 0], [[12, 14], [22, 24]])


def test_roi_pool_rounds_halves_away_from_zero_like_c():
    # np.round(2.5) would give 2; C's round gives 3, so the RoI is cell (3, 3).
    out, argmax = roi_pool(ARANGE, [[0, 2.5, 2.5, 2.5, 2.5]], 1)
    assert out[0, 0, 0, 0] == 18 and argmax[0, 0, 0, 0] == 18


def test_roi_pool_of_the_tutorial_8x8_example_takes_each_cell_max():
    # The RoI covers 7 x 5 cells; 2x2 bins are rows 3-5 / 5-7, columns 0-3 / 3-6.
    out, argmax = roi_pool(MAP8, ROI8, 2)
    m = MAP8[0, 0]
    expected = [[m[3:6, 0:4].max(), m[3:6, 3:7].max()], [m[5:8, 0:4].max(), m[5:8, 3:7].max()]]
    np.testing.assert_array_equal(out[0, 0], expected)
    np.testing.assert_array_equal(out[0, 0], [[0.85, 0.96], [0.97, 0.96]])
    np.testing.assert_array_equal(argmax[0, 0], [[3 * 8 + 0, 5 * 8 + 6], [7 * 8 + 2, 5 * 8 + 6]])


def test_the_tutorial_fractional_roi_rounds_to_the_same_cells():
    fractional = roi_pool(MAP8, [[0, 0.3, 3.4, 6.4, 7.2]], 2)
    exact = roi_pool(MAP8, ROI8, 2)
    np.testing.assert_array_equal(fractional[0], exact[0])
    np.testing.assert_array_equal(fractional[1], exact[1])


def test_an_empty_roi_pool_bin_gives_zero_and_argmax_minus_one():
    out, argmax = roi_pool(ARANGE, [[0, 20, 20, 30, 30]], 2)
    np.testing.assert_array_equal(out, 0)
    np.testing.assert_array_equal(argmax, -1)


def test_adaptive_sampling_uses_ceil_of_roi_size_over_output_size_per_axis():
    (points,) = roi_align_sampling_points([[0, 0, 0, 9, 4]], (2, 2), sampling_ratio=-1)
    assert points.shape == (2, 2, 2, 5, 2)  # ceil(4 / 2) = 2 rows, ceil(9 / 2) = 5 columns


def test_sample_points_are_the_centres_of_equal_sub_cells_of_each_bin():
    (points,) = roi_align_sampling_points([[0, 1, 2, 5, 4]], (1, 2), sampling_ratio=2)
    np.testing.assert_allclose(points[0, 0, :, :, 0], [[1.5, 2.5], [1.5, 2.5]])
    np.testing.assert_allclose(points[0, 1, :, :, 0], [[3.5, 4.5], [3.5, 4.5]])
    np.testing.assert_allclose(points[0, 0, :, 0, 1], [2.5, 3.5])


def test_bilinear_neighbours_clamp_points_on_the_border_strip_to_the_edge_cells():
    index, weight = bilinear_neighbours(np.array([[-0.5, 4.7], [9.0, 0.0], [5.0, -1.5]]), 5, 5)
    # (-0.5, 4.7): x clamps to 0, y to the last row: all weight on cell (4, 0).
    assert index[0] @ weight[0] == 20 and weight[0].sum() == 1
    # x = 9 is beyond W = 5 by more than a cell; y = -1.5 likewise: nothing is read.
    np.testing.assert_array_equal(weight[1:], 0)


def test_crop_and_resize_of_the_whole_map_at_its_own_size_is_the_map():
    features = np.random.default_rng(2).normal(size=(1, 3, 4, 6))
    out = crop_and_resize(features, [[0, 0, 0, 1, 1]], (4, 6))
    np.testing.assert_allclose(out[0], features[0])


def test_crop_and_resize_samples_the_box_corners_and_extrapolates_outside():
    out = crop_and_resize(ARANGE, [[0, 0.25, 0.5, 1.5, 0.5]], (1, 3), extrapolation_value=-1)
    # x = 0.25 * 4 = 1, 3.5, 6 (outside); y = 0.5 * 4 = 2: value 5 * 2 + x.
    np.testing.assert_allclose(out[0, 0, 0], [11, 13.5, -1])


# --- invariants --------------------------------------------------------------------


@given(
    data=st.data(),
    value=st.floats(-100, 100),
    ratio=st.sampled_from([-1, 1, 2, 3]),
    aligned=st.booleans(),
    reduction=st.sampled_from(["avg", "max"]),
)
def test_roi_align_of_a_constant_map_is_that_constant(data, value, ratio, aligned, reduction):
    features = np.full((2, 2, 6, 7), value)
    # RoIs within [0, size - 1] keep every sample (even of a forced 1-pixel RoI) on the map.
    rois = rois_within(data.draw, 2, 5, 6)
    if ratio <= 0 and aligned:
        rois[:, 3:] = np.maximum(rois[:, 3:], rois[:, 1:3] + 0.01)  # an empty RoI has no samples
    out = roi_align(features, rois, (2, 3), 1.0, ratio, aligned, reduction)
    np.testing.assert_allclose(out, value, rtol=1e-12, atol=1e-12)


@given(data=st.data(), ratio=st.sampled_from([-1, 2]))
def test_roi_align_commutes_with_2x_bilinear_upsampling_when_aligned(data, ratio):
    # A map sampled from a bilinear function a + b x + c y + d x y is reproduced exactly
    # by bilinear interpolation and by 2x upsampling (half-pixel centres), so RoIAlign
    # must give the same numbers on the map and on its 2x version with doubled boxes.
    coef = np.random.default_rng(data.draw(st.integers(0, 100))).normal(size=(4, 3))
    features = _bilinear_map(coef, 8, 9, 1.0)
    upsampled = _upsample_2x(features)
    np.testing.assert_allclose(
        upsampled[:, :, 2:-2, 2:-2], _bilinear_map(coef, 16, 18, 2.0)[:, :, 2:-2, 2:-2]
    )
    rois = rois_within(data.draw, 1, 8, 9, margin=1.0)
    small = roi_align(features, rois, (2, 2), 1.0, ratio, aligned=True)
    doubled = rois * [1, 2, 2, 2, 2]
    large = roi_align(upsampled, doubled, (2, 2), 1.0, ratio, aligned=True)
    np.testing.assert_allclose(large, small, rtol=1e-9, atol=1e-9)


def _bilinear_map(coef, height, width, scale):
    x = (np.arange(width) + 0.5) / scale
    y = (np.arange(height) + 0.5) / scale
    yy, xx = np.meshgrid(y, x, indexing="ij")
    a, b, c, d = (v[:, None, None] for v in coef)
    return (a + b * xx + c * yy + d * xx * yy)[None]


def _upsample_2x(features):
    """Bilinear 2x upsampling with half-pixel centres and edge clamping."""
    _, _, h, w = features.shape

    def source(n):
        s = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
        lo = np.floor(s).astype(int)
        return lo, np.minimum(lo + 1, n - 1), s - lo

    y0, y1, ly = source(h)
    x0, x1, lx = source(w)
    rows = features[:, :, y0] * (1 - ly)[:, None] + features[:, :, y1] * ly[:, None]
    return rows[..., x0] * (1 - lx) + rows[..., x1] * lx


@given(data=st.data(), ratio=st.sampled_from([1, 2]))
def test_max_reduction_is_at_least_the_average(data, ratio):
    features = np.random.default_rng(3).normal(size=(1, 3, 6, 6))
    rois = rois_within(data.draw, 1, 6, 6)
    avg = roi_align(features, rois, 2, 1.0, ratio)
    assert np.all(roi_align(features, rois, 2, 1.0, ratio, reduction="max") >= avg - 1e-12)


def test_rois_wholly_outside_the_map_give_zeros():
    out = roi_align(ARANGE, [[0, 8, 8, 12, 12], [0, -9, -9, -3, -2]], 3, sampling_ratio=2)
    np.testing.assert_array_equal(out, 0)


def test_a_zero_width_roi_is_widened_to_one_pixel_unless_aligned():
    features = np.random.default_rng(4).normal(size=(1, 2, 6, 6))
    empty = roi_align(features, [[0, 2, 2, 2, 2]], 2, 1.0, 2)
    np.testing.assert_allclose(empty, roi_align(features, [[0, 2, 2, 3, 3]], 2, 1.0, 2))
    np.testing.assert_array_equal(roi_align(features, [[0, 2, 2, 2, 2]], 2, aligned=True), 0)


def test_a_tiny_legacy_roi_reads_like_a_one_cell_roi_at_the_same_corner():
    features = np.random.default_rng(9).normal(size=(1, 2, 6, 6))
    tiny = roi_align(features, [[0, 2.2, 3.1, 2.9, 3.4]], 2, 1.0, 2)
    np.testing.assert_allclose(tiny, roi_align(features, [[0, 2.2, 3.1, 3.2, 4.1]], 2, 1.0, 2))


def test_a_huge_roi_averages_only_the_samples_that_land_near_the_map():
    features = np.ones((1, 1, 5, 5))
    roi = np.array([[0, -20, -20, 25, 25]], np.float64)
    out = roi_align(features, roi, 1, 1.0, -1)
    (points,) = roi_align_sampling_points(roi, 1, 1.0, -1)
    near = np.all((points >= -1) & (points <= 5), axis=-1)
    np.testing.assert_allclose(out[0, 0, 0, 0], near.mean())


def test_no_rois_give_empty_outputs_of_the_right_shape():
    features = np.zeros((2, 3, 5, 5), np.float32)
    none = np.zeros((0, 5))
    assert roi_align(features, none, (2, 4)).shape == (0, 3, 2, 4)
    assert roi_align(features, none, (2, 4)).dtype == np.float32
    out, argmax = roi_pool(features, none, 3)
    assert out.shape == argmax.shape == (0, 3, 3, 3) and argmax.dtype == np.int64
    grad = roi_align_backward(np.zeros((0, 3, 2, 4), np.float32), none, features.shape)
    assert grad.shape == features.shape and not grad.any()
    assert not roi_pool_backward(out, argmax, none, features.shape).any()


def test_the_output_keeps_the_features_dtype():
    features = np.random.default_rng(5).normal(size=(1, 1, 4, 4))
    assert roi_align(features.astype(np.float32), [[0, 0, 0, 3, 3]], 2).dtype == np.float32
    assert roi_align(features, [[0, 0, 0, 3, 3]], 2).dtype == np.float64
    assert roi_pool(features.astype(np.float32), [[0, 0, 0, 3, 3]], 2)[0].dtype == np.float32


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: roi_align(ARANGE, np.zeros((3, 4)), 2), r"rois must be \(K, 5\).*\(3, 4\)"),
        (lambda: roi_align(ARANGE, [[1, 0, 0, 2, 2]], 2), r"batch indices in \[0, 1\)"),
        (lambda: roi_align(ARANGE, [[0.5, 0, 0, 2, 2]], 2), r"integer batch indices"),
        (lambda: roi_align(ARANGE, [[0, np.nan, 0, 2, 2]], 2), r"rois must be finite"),
        (
            lambda: roi_align(ARANGE, [[0, 0, 0, 2, 2]], 2, -0.5),
            r"spatial_scale must be a positive",
        ),
        (lambda: roi_align(ARANGE, [[0, 0, 0, 2, 2]], 0), r"output_size must be an int >= 1"),
        (lambda: roi_align(ARANGE, [[0, 0, 0, 2, 2]], (2, 0)), r"output_size must be"),
        (lambda: roi_align(ARANGE[0], [[0, 0, 0, 2, 2]], 2), r"features must be 4-D"),
        (lambda: roi_align(ARANGE, [[0, 0, 0, 2, 2]], 2, reduction="sum"), r"reduction"),
        (lambda: roi_pool(ARANGE, [[0, 0, 0, 2, 2, 3]], 2), r"rois must be \(K, 5\)"),
        (lambda: roi_pool(ARANGE, [[0, 0, np.inf, 2, 2]], 2), r"rois must be finite"),
        (lambda: roi_pool(ARANGE, [[0, 0, 0, 2, 2]], 2, 0.0), r"spatial_scale"),
        (
            lambda: MultiScaleRoIAlign(2)([ARANGE], [np.zeros((2, 5))], [(5, 5)]),
            r"boxes\[0\] must be \(K_i, 4\)",
        ),
        (
            lambda: roi_align_backward(np.zeros((1, 2, 2, 2)), [[0, 0, 0, 2, 2]], (1, 1, 5, 5)),
            r"grad_out must be \(K, C, ph, pw\) = \(1, 1",
        ),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- gradients: float64 central differences ----------------------------------------


def _numerical_gradient(forward, features, grad_out, eps=1e-6):
    grad = np.zeros_like(features)
    for i in np.ndindex(features.shape):
        step = np.zeros_like(features)
        step[i] = eps
        grad[i] = np.sum((forward(features + step) - forward(features - step)) * grad_out)
    return grad / (2 * eps)


@pytest.mark.parametrize(("ratio", "aligned"), [(-1, False), (2, False), (-1, True), (3, True)])
def test_roi_align_backward_matches_central_differences(ratio, aligned):
    rng = np.random.default_rng(6)
    features = rng.normal(size=(2, 2, 5, 6))
    rois = np.array([[0, 1.2, 0.3, 9.7, 8.1], [1, -3, -2, 4, 3], [1, 10, 8, 13, 12.5]])
    grad_out = rng.normal(size=(3, 2, 2, 3))

    def forward(f):
        return roi_align(f, rois, (2, 3), 0.5, ratio, aligned)

    np.testing.assert_allclose(
        roi_align_backward(grad_out, rois, features.shape, 0.5, ratio, aligned),
        _numerical_gradient(forward, features, grad_out),
        rtol=1e-6,
        atol=1e-8,
    )


def test_roi_pool_backward_matches_central_differences():
    rng = np.random.default_rng(7)
    features = rng.normal(size=(2, 2, 5, 6))  # distinct values: no ties, max is smooth
    rois = np.array([[0, 1.2, 0.3, 9.7, 8.1], [1, -3, -2, 4, 3], [1, 10, 8, 13, 12.5]])
    grad_out = rng.normal(size=(3, 2, 2, 3))
    _, argmax = roi_pool(features, rois, (2, 3), 0.5)

    def forward(f):
        return roi_pool(f, rois, (2, 3), 0.5)[0]

    np.testing.assert_allclose(
        roi_pool_backward(grad_out, argmax, rois, features.shape),
        _numerical_gradient(forward, features, grad_out),
        rtol=1e-6,
        atol=1e-8,
    )


@pytest.mark.parametrize("op", ["align", "pool"])
def test_multiscale_roi_backward_matches_central_differences(op):
    rng = np.random.default_rng(8)
    features = [rng.normal(size=(1, 2, 32 // s, 32 // s)) for s in (4, 8)]
    boxes = [np.array([[1.0, 2.0, 9.0, 12.0], [3.0, 1.0, 30.0, 29.0]])]
    pooler = MultiScaleRoI(2, op, sampling_ratio=2, canonical_scale=16, canonical_level=3)
    out = pooler(features, boxes, [(32, 32)])
    assert pooler.levels(boxes).tolist() == [0, 1]
    grad_out = rng.normal(size=out.shape)
    grads = pooler.backward(grad_out)
    for level in range(2):

        def forward(f, level=level):
            with nn.no_grad():
                return pooler(
                    [f if i == level else g for i, g in enumerate(features)], boxes, [(32, 32)]
                )

        numerical = _numerical_gradient(forward, features[level], grad_out)
        np.testing.assert_allclose(grads[level], numerical, rtol=1e-6, atol=1e-8)


def test_multiscale_roi_keeps_state_on_the_module_stack_and_forget_clears_it():
    features = [np.random.default_rng(0).normal(size=(1, 2, 8, 8))]
    pooler = MultiScaleRoI(2, "pool")
    pooler([f for f in features], [np.array([[0.0, 0, 4, 4]])], [(32, 32)])
    assert len(pooler._saved) == 1
    pooler.forget()
    with pytest.raises(RuntimeError, match="no forward to match"):
        pooler.backward(np.zeros((1, 2, 2, 2)))
    pooler.eval()([f for f in features], [np.array([[0.0, 0, 4, 4]])], [(32, 32)])
    assert pooler._saved == []


def test_multiscale_crop_and_resize_has_no_backward_and_says_so():
    pooler = MultiScaleRoI(2, "crop_and_resize")
    pooler([np.zeros((1, 1, 8, 8))], [np.array([[0.0, 0, 4, 4]])], [(32, 32)])
    with pytest.raises(NotImplementedError, match="train with 'align' or 'pool'"):
        pooler.backward(np.zeros((1, 1, 2, 2)))


def test_multiscale_roi_rejects_an_unknown_op():
    with pytest.raises(ValueError, match="op must be one of align, pool, crop_and_resize"):
        MultiScaleRoI(7, "bilinear")


def test_roipool_reader_equals_roi_pool_on_the_level_of_each_box():
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(1, 2, 32 // 2**i, 32 // 2**i)) for i in range(4)]
    boxes = [np.array([[4, 4, 20, 28.0], [1, 1, 120, 100.0]])]
    reader = MultiScaleRoI(7, "pool")
    out = reader(features, boxes, [(128, 128)])
    for j, level in enumerate(reader.levels(boxes[0])):
        rois = np.concatenate([[0.0], boxes[0][j]])[None]
        expected, _ = roi_pool(features[level], rois, 7, reader.scales[level])
        np.testing.assert_array_equal(out[j], expected[0])


# --- MultiScaleRoIAlign ------------------------------------------------------------


def test_level_mapping_sends_a_224_box_to_p4_and_halves_to_finer_levels():
    pooler = MultiScaleRoIAlign(7)
    pooler.setup_scales([(1, 1, 800 // s, 800 // s) for s in (4, 8, 16, 32)], [(800, 800)])
    assert pooler.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    sides = np.array([224, 112, 56, 448, 896, 10, 0, 223.9], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1)
    # level index 0..3 is P2..P5
    np.testing.assert_array_equal(pooler.levels(boxes), [2, 1, 0, 3, 3, 0, 0, 1])


def test_levels_before_any_call_explain_what_is_missing():
    with pytest.raises(ValueError, match="setup_scales"):
        MultiScaleRoIAlign(7).levels(np.zeros((1, 4)))


# --- torchvision parity (fixtures written by tests/fixtures/gen_roi_ops.py) ----------

# torchvision computed these in float64, as we do: equal to rounding (the sums run in
# another order), not to a float32 tolerance. The one float32 case keeps float32's.
F64 = {"rtol": 1e-10, "atol": 1e-12}

BACKENDS = [
    "numpy",
    "numba",
    pytest.param("cuda", marks=pytest.mark.cuda),
]
ALIGN_KEYS = sorted({k.rsplit("/", 1)[0] for k in FIXTURES.files if k.startswith("align/")})


def _align_cases(backend):
    # The simulator runs one Python thread per output element: small outputs only there.
    return [k for k in ALIGN_KEYS if backend != "cuda" or k.startswith("align/2x3")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_roi_align_forward_and_backward_equal_torchvision_for_every_variant(backend):
    features, rois = FIXTURES["features"], FIXTURES["rois"]
    scale = float(FIXTURES["spatial_scale"])
    with use_backend(backend):
        for key in _align_cases(backend):
            size, ratio, aligned = key.split("/")[1:]
            ph, pw = (int(v) for v in size.split("x"))
            ratio, aligned = int(ratio[1:]), aligned == "a1"
            out = roi_align(features, rois, (ph, pw), scale, ratio, aligned)
            np.testing.assert_allclose(out, FIXTURES[f"{key}/out"], **F64, err_msg=key)
            grad = roi_align_backward(
                FIXTURES[f"{key}/grad_out"], rois, features.shape, scale, ratio, aligned
            )
            np.testing.assert_allclose(grad, FIXTURES[f"{key}/grad"], **F64, err_msg=key)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_roi_align_in_float32_equals_torchvision(backend):
    features = FIXTURES["features"].astype(np.float32)
    rois = FIXTURES["rois"].astype(np.float32)
    with use_backend(backend):
        out = roi_align(features, rois, 7, float(FIXTURES["spatial_scale"]), 2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, FIXTURES["align32/out"], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_roi_pool_forward_argmax_and_backward_equal_torchvision(backend):
    features, rois = FIXTURES["features"], FIXTURES["rois"]
    scale = float(FIXTURES["spatial_scale"])
    sizes = [(2, 3)] if backend == "cuda" else [(2, 3), (7, 7)]
    with use_backend(backend):
        for ph, pw in sizes:
            key = f"pool/{ph}x{pw}"
            out, argmax = roi_pool(features, rois, (ph, pw), scale)
            np.testing.assert_array_equal(out, FIXTURES[f"{key}/out"])  # a max: one input value
            np.testing.assert_array_equal(argmax, FIXTURES[f"{key}/argmax"])
            grad = roi_pool_backward(FIXTURES[f"{key}/grad_out"], argmax, rois, features.shape)
            np.testing.assert_allclose(grad, FIXTURES[f"{key}/grad"], **F64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multiscale_roi_align_on_p2_to_p5_equals_torchvision(backend):
    features = [FIXTURES[f"msra/features{i}"] for i in range(4)]
    boxes = [FIXTURES["msra/boxes0"], FIXTURES["msra/boxes1"]]
    sizes = [tuple(s) for s in FIXTURES["msra/image_sizes"].tolist()]
    pooler = MultiScaleRoIAlign((5, 4), sampling_ratio=2)
    with use_backend(backend):
        out = pooler(features, boxes, sizes)
        grads = pooler.backward(FIXTURES["msra/grad_out"])
    np.testing.assert_array_equal(pooler.levels(boxes), FIXTURES["msra/levels"])
    np.testing.assert_allclose(out, FIXTURES["msra/out"], **F64)
    for i, grad in enumerate(grads):
        np.testing.assert_allclose(grad, FIXTURES[f"msra/grad{i}"], **F64)
