"""boxes.py: areas, IoU, box coding, clipping, NMS — hand-computed cases, properties,
and parity with torchvision (fixtures from tests/fixtures/gen_boxes.py)."""

import math
import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import boxes, scored_boxes

from tinymaskrcnn.boxes import (
    BBOX_XFORM_CLIP,
    BoxCoder,
    batched_nms,
    box_area,
    box_iou,
    clip_boxes,
    nms,
    remove_small_boxes,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "boxes.npz"

# --- hand-computed cases ---------------------------------------------------------------


def test_area_is_width_times_height_without_plus_one():
    b = np.array([[0, 0, 10, 5], [2, 3, 2, 9], [1.5, 1, 4, 2]], np.float32)
    np.testing.assert_array_equal(box_area(b), [50, 0, 2.5])


def test_iou_of_two_offset_squares_is_one_seventh():
    # 10x10 squares overlapping on a 5x5 corner: 25 / (100 + 100 - 25).
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 5, 15, 15]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[25 / 175]], rtol=1e-7)


def test_boxes_that_only_touch_have_iou_zero():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[10, 0, 20, 10]], np.float32)
    assert box_iou(a, b)[0, 0] == 0


def test_iou_of_two_degenerate_boxes_is_zero_not_nan():
    points = np.array([[3, 3, 3, 3], [3, 3, 3, 3]], np.float32)
    np.testing.assert_array_equal(box_iou(points, points), np.zeros((2, 2)))


def test_iou_keeps_the_input_dtype_and_promotes_mixed_inputs():
    a32 = np.array([[0, 0, 1, 1]], np.float32)
    assert box_iou(a32, a32).dtype == np.float32
    assert box_iou(a32, a32.astype(np.float64)).dtype == np.float64
    assert box_iou(np.array([[0, 0, 1, 1]]), a32).dtype == np.float32  # ints -> float32


def test_iou_of_empty_inputs_has_the_right_shape():
    a = np.zeros((0, 4), np.float32)
    b = np.array([[0, 0, 1, 1]], np.float32)
    assert box_iou(a, b).shape == (0, 1)
    assert box_iou(b, a).shape == (1, 0)
    assert box_iou(a, b).dtype == np.float32


def test_encoding_a_shifted_and_doubled_box_gives_hand_computed_deltas():
    anchor = np.array([[0, 0, 10, 20]], np.float64)  # centre (5, 10), 10 x 20
    gt = np.array([[5, 0, 25, 40]], np.float64)  # centre (15, 20), 20 x 40
    deltas = BoxCoder().encode(gt, anchor)
    np.testing.assert_allclose(deltas, [[1.0, 0.5, math.log(2), math.log(2)]])
    deltas = BoxCoder((10, 10, 5, 5)).encode(gt, anchor)
    np.testing.assert_allclose(deltas, [[10.0, 5.0, 5 * math.log(2), 5 * math.log(2)]])


def test_decoding_clamps_dw_at_log_1000_over_16():
    anchor = np.array([[0, 0, 16, 16]], np.float64)
    huge = np.array([[0, 0, 50.0, 50.0]])
    box = BoxCoder().decode(huge, anchor)
    # exp(clip) * 16 = 1000 wide, centred on 8.
    np.testing.assert_allclose(box, [[8 - 500, 8 - 500, 8 + 500, 8 + 500]])
    assert BBOX_XFORM_CLIP == pytest.approx(math.log(1000 / 16))


def test_decoding_several_classes_keeps_the_shape_of_the_deltas():
    anchors = np.array([[0, 0, 10, 10], [5, 5, 7, 9]], np.float32)
    deltas = np.zeros((2, 12), np.float32)
    out = BoxCoder((10, 10, 5, 5)).decode(deltas, anchors)
    assert out.shape == (2, 12) and out.dtype == np.float32
    np.testing.assert_array_equal(out.reshape(2, 3, 4), np.repeat(anchors[:, None], 3, axis=1))


def test_clip_boxes_bounds_x_by_width_and_y_by_height():
    b = np.array([[-5, -5, 50, 50], [10, 20, 30, 40]], np.float32)
    np.testing.assert_array_equal(clip_boxes(b, (25, 35)), [[0, 0, 35, 25], [10, 20, 30, 25]])


def test_remove_small_boxes_keeps_boxes_exactly_at_the_minimum():
    b = np.array([[0, 0, 1, 1], [0, 0, 0.5, 5], [0, 0, 2, 0.999]], np.float32)
    np.testing.assert_array_equal(remove_small_boxes(b, 1.0), [0])
    assert remove_small_boxes(b, 1.0).dtype == np.int64


def test_nms_suppresses_only_above_the_threshold_strictly():
    # IoU of the two boxes is exactly 0.5 (25 / 50): kept at 0.5, suppressed at 0.49.
    b = np.array([[0, 0, 10, 5], [0, 0, 5, 5]], np.float64)
    s = np.array([0.9, 0.8])
    assert box_iou(b[:1], b[1:])[0, 0] == 0.5
    np.testing.assert_array_equal(nms(b, s, 0.5), [0, 1])
    np.testing.assert_array_equal(nms(b, s, 0.49), [0])


def test_nms_returns_indices_by_decreasing_score_with_ties_by_index():
    b = np.array([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21], [30, 30, 31, 31]], np.float32)
    s = np.array([0.5, 0.9, 0.5, 0.7], np.float32)
    keep = nms(b, s, 0.5)
    np.testing.assert_array_equal(keep, [1, 3, 0, 2])
    assert keep.dtype == np.int64


def test_a_suppressed_box_does_not_suppress_others():
    # 0 suppresses 1; 1 would suppress 2, but 1 is gone, so 2 stays.
    b = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], np.float32)
    s = np.array([0.9, 0.8, 0.7], np.float32)
    np.testing.assert_array_equal(nms(b, s, 0.4), [0, 2])


def test_batched_nms_never_suppresses_across_categories():
    b = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    s = np.array([0.7, 0.9, 0.8], np.float32)
    np.testing.assert_array_equal(batched_nms(b, s, np.array([0, 1, 0]), 0.5), [1, 2])


def test_nms_of_no_boxes_is_an_empty_int64_array():
    for keep in (
        nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5),
        batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 0.5),
    ):
        assert keep.shape == (0,) and keep.dtype == np.int64


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((3, 5)), r"boxes1 must be \(N, 4\).*got shape \(3, 5\)"),
        (np.zeros(4), r"boxes1 must be \(N, 4\).*got shape \(4,\)"),
        (np.array([[0, 0, np.nan, 1]]), "boxes1 must be finite; row 0"),
        (np.array([[0, 0, 1, 1], [0, 0, np.inf, 1]]), "boxes1 must be finite; row 1"),
        (np.array([[5, 0, 1, 1]]), r"boxes1 must have x1 <= x2 and y1 <= y2; row 0"),
    ],
)
def test_malformed_boxes_are_rejected_with_the_argument_name(bad, message):
    with pytest.raises(ValueError, match=message):
        box_iou(bad, np.zeros((1, 4)))


@pytest.mark.parametrize("threshold", [-0.1, float("nan"), "high"])
def test_nms_rejects_a_threshold_that_is_not_a_number_at_least_zero(threshold):
    with pytest.raises(ValueError, match="iou_threshold must be"):
        nms(np.zeros((1, 4)), np.zeros(1), threshold)


def test_nms_rejects_scores_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"scores must be \(2,\), one per box; got shape \(3,\)"):
        nms(np.zeros((2, 4)), np.zeros(3), 0.5)


def test_batched_nms_rejects_float_category_indices():
    with pytest.raises(ValueError, match=r"idxs must be \(2,\) int"):
        batched_nms(np.zeros((2, 4)), np.zeros(2), np.zeros(2), 0.5)


def test_encoding_rejects_anchors_of_zero_width():
    with pytest.raises(ValueError, match="anchors to encode must have positive width"):
        BoxCoder().encode(np.array([[0, 0, 1, 1.0]]), np.array([[0, 0, 0, 1.0]]))


def test_decoding_rejects_deltas_that_are_not_groups_of_four():
    with pytest.raises(ValueError, match=r"deltas must be \(N, 4 k\)"):
        BoxCoder().decode(np.zeros((2, 6)), np.zeros((2, 4)))


def test_decoding_rejects_nan_deltas():
    with pytest.raises(ValueError, match="deltas must be finite"):
        BoxCoder().decode(np.full((1, 4), np.nan), np.zeros((1, 4)))


def test_box_coder_rejects_non_positive_weights():
    with pytest.raises(ValueError, match="weights must be 4 positive numbers"):
        BoxCoder((1, 1, 0, 1))


# --- properties ------------------------------------------------------------------------


@given(a=boxes(), b=boxes())
def test_iou_is_symmetric(a, b):
    np.testing.assert_array_equal(box_iou(a, b), box_iou(b, a).T)


@given(a=boxes(), b=boxes())
def test_iou_lies_in_zero_one(a, b):
    iou = box_iou(a, b)
    assert np.all((iou >= 0) & (iou <= 1))


@given(a=boxes(max_n=50))
def test_iou_of_a_box_with_itself_is_one(a):
    nonempty = box_area(a) > 0
    np.testing.assert_allclose(np.diag(box_iou(a, a))[nonempty], 1.0, rtol=1e-6)


@given(
    gt=boxes(min_n=1, degenerate=False, dtype=np.float64),
    anchors=boxes(min_n=1, degenerate=False, dtype=np.float64),
    weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]),
)
def test_decoding_the_encoding_gives_back_the_boxes(gt, anchors, weights):
    n = min(len(gt), len(anchors))
    gt, anchors = gt[:n], anchors[:n]
    coder = BoxCoder(weights, bbox_xform_clip=1e9)  # no clip: sizes differ up to 1600x
    back = coder.decode(coder.encode(gt, anchors), anchors)
    np.testing.assert_allclose(back, gt, rtol=1e-9, atol=1e-9)


@given(data=scored_boxes(max_n=40), threshold=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_nms_keeps_no_pair_above_the_threshold(data, threshold):
    b, s, _ = data
    keep = nms(b, s, threshold)
    iou = box_iou(b[keep], b[keep])
    np.fill_diagonal(iou, 0)
    assert not (iou > threshold).any()


@given(data=scored_boxes(max_n=40), threshold=st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_every_box_nms_drops_overlaps_a_kept_box_with_a_higher_or_equal_score(data, threshold):
    b, s, _ = data
    keep = nms(b, s, threshold)
    dropped = np.setdiff1d(np.arange(len(b)), keep)
    iou = box_iou(b[dropped], b[keep])
    rank = np.empty(len(b), int)
    rank[np.argsort(-s, kind="stable")] = np.arange(len(b))
    earlier = rank[keep][None, :] < rank[dropped][:, None]
    assert ((iou > threshold) & earlier).any(axis=1).all()


@given(data=scored_boxes(max_n=40), threshold=st.sampled_from([0.3, 0.5]))
def test_nms_output_is_sorted_by_decreasing_score(data, threshold):
    b, s, _ = data
    assert np.all(np.diff(s[nms(b, s, threshold)]) <= 0)


@given(data=scored_boxes(max_n=40, num_classes=3), threshold=st.sampled_from([0.3, 0.5]))
def test_batched_nms_equals_nms_per_category_merged_by_score(data, threshold):
    b, s, idxs = data
    expected = []
    for c in np.unique(idxs):
        members = np.flatnonzero(idxs == c)
        expected.extend(members[nms(b[members], s[members], threshold)])
    expected = np.array(expected, dtype=np.int64)
    expected = expected[np.lexsort((expected, -s[expected]))]
    np.testing.assert_array_equal(batched_nms(b, s, idxs, threshold), expected)


# --- torchvision parity ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tv():
    return dict(np.load(FIXTURES))


def test_box_iou_equals_torchvision_except_nan_becomes_zero(tv):
    expected = tv["iou"]
    union_zero = np.isnan(expected)  # a zero-width box against a zero-height one
    assert union_zero.any()
    got = box_iou(tv["iou_a"], tv["iou_b"])
    np.testing.assert_allclose(got[~union_zero], expected[~union_zero], rtol=1e-5, atol=1e-7)
    assert (got[union_zero] == 0).all()


@pytest.mark.parametrize("name", ["rpn", "head"])
def test_encode_equals_torchvision(tv, name):
    coder = BoxCoder(tuple(tv[f"{name}_weights"]))
    got = coder.encode(tv["code_gt"], tv["code_anchors"])
    np.testing.assert_allclose(got, tv[f"{name}_encoded"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["rpn", "head"])
def test_decode_equals_torchvision_including_the_clip(tv, name):
    coder = BoxCoder(tuple(tv[f"{name}_weights"]))
    got = coder.decode(tv["decode_deltas"], tv["code_anchors"])
    expected = tv[f"{name}_decoded"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("case", range(4))
def test_nms_equals_torchvision(tv, case):
    b, s, t = tv[f"nms{case}_boxes"], tv[f"nms{case}_scores"], float(tv[f"nms{case}_threshold"])
    np.testing.assert_array_equal(nms(b, s, t), tv[f"nms{case}_keep"])


@pytest.mark.parametrize("case", range(3))
def test_batched_nms_equals_torchvision(tv, case):
    b, s = tv[f"bnms{case}_boxes"], tv[f"bnms{case}_scores"]
    idxs, t = tv[f"bnms{case}_idxs"], float(tv[f"bnms{case}_threshold"])
    np.testing.assert_array_equal(batched_nms(b, s, idxs, t), tv[f"bnms{case}_keep"])


def test_clip_and_remove_small_equal_torchvision(tv):
    clipped = clip_boxes(tv["clip_in"], tuple(tv["clip_size"]))
    np.testing.assert_array_equal(clipped, tv["clip_out"])
    np.testing.assert_array_equal(remove_small_boxes(clipped, 4.0), tv["small_keep"])
