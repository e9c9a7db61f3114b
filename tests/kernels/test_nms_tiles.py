"""The numba NMS (spatial tiles, ``numba_boxes._nms_tiles``) keeps exactly the reference's boxes.

The kernel skips every tile of boxes it cannot overlap, so the cases that matter are
those where the tiles are many (more than the 64 boxes of one tile) and where skipping
or the layout could go wrong: many identical boxes, equal scores, boxes stacked in one
column or one row, huge boxes that cover all the others, zero-area boxes (points and
lines), IoUs that land exactly on the threshold, categories with arbitrary labels, and
coordinates near the largest float. Every case compares the keep list with the NumPy
reference exactly, for nms and batched_nms, in float32 and float64.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from strategies import boxes, random_boxes

from tinymaskrcnn.boxes import batched_nms, nms, score_order
from tinymaskrcnn.kernels import numba_boxes, use_backend

DTYPES = st.sampled_from([np.float32, np.float64])
THRESHOLDS = st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9, 1.0])
FEW = settings(max_examples=15)


def assert_same_keep(b, s, threshold, idxs=None):
    with use_backend("numba"):
        got = nms(b, s, threshold) if idxs is None else batched_nms(b, s, idxs, threshold)
    with use_backend("numpy"):
        want = nms(b, s, threshold) if idxs is None else batched_nms(b, s, idxs, threshold)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


@st.composite
def adversarial(draw, dtype):
    """(boxes, scores): a few hundred boxes mixing the cases that break spatial shortcuts."""
    parts = [draw(boxes(min_n=0, max_n=120, dtype=dtype))]
    names = ["same", "column", "row", "huge", "flat", "slivers"]
    family = draw(st.sets(st.sampled_from(names), max_size=len(names)))
    if "same" in family:  # one box many times: all but the first are suppressed (t < 1)
        one = draw(boxes(min_n=1, max_n=1, dtype=dtype, degenerate=False))
        parts.append(np.repeat(one, draw(st.integers(2, 150)), axis=0))
    if "column" in family:  # equal x extents, stacked in y with overlaps
        n = draw(st.integers(2, 150))
        y = np.sort(draw(hnp.arrays(np.int64, n, elements=st.integers(0, 1000)))) / 4.0
        h = draw(hnp.arrays(np.int64, n, elements=st.integers(0, 80))) / 4.0
        parts.append(np.stack([np.full(n, 10.0), y, np.full(n, 30.0), y + h], axis=1))
    if "row" in family:  # the same, along x
        n = draw(st.integers(2, 150))
        x = draw(hnp.arrays(np.int64, n, elements=st.integers(0, 1000))) / 4.0
        w = draw(hnp.arrays(np.int64, n, elements=st.integers(0, 80))) / 4.0
        parts.append(np.stack([x, np.full(n, 5.0), x + w, np.full(n, 25.0)], axis=1))
    if "huge" in family:  # boxes covering everything: every tile is tested
        n = draw(st.integers(1, 5))
        lo = draw(hnp.arrays(np.int64, (n, 2), elements=st.integers(-400, 0))) / 4.0
        parts.append(np.concatenate([lo, lo + 2000.0], axis=1))
    if "flat" in family:  # points and lines: zero area, zero union with each other
        n = draw(st.integers(2, 100))
        p = draw(hnp.arrays(np.int64, (n, 2), elements=st.integers(0, 40))) / 4.0
        line = draw(hnp.arrays(np.int64, n, elements=st.integers(0, 40))) / 4.0
        parts.append(np.concatenate([p, p + np.stack([line, 0 * line], axis=1)], axis=1))
    if "slivers" in family:  # a lattice of boxes that overlap their neighbours by a hair
        k = draw(st.integers(2, 14))
        side, gap = draw(st.sampled_from([(10.0, 9.75), (4.0, 3.5), (8.0, 8.0)]))
        corner = np.stack(np.meshgrid(np.arange(k), np.arange(k)), -1).reshape(-1, 2) * gap
        parts.append(np.concatenate([corner, corner + side], axis=1))
    b = np.concatenate(parts).astype(dtype)
    b = b[draw(st.permutations(range(len(b))))] if len(b) < 40 else b[::-1].copy()
    n_scores = draw(st.integers(1, 6))  # few distinct scores: ties everywhere
    scores = draw(hnp.arrays(np.int64, len(b), elements=st.integers(0, n_scores - 1)))
    return b, (scores / n_scores).astype(dtype)


@FEW
@given(dtype=DTYPES, data=st.data(), threshold=THRESHOLDS)
def test_nms_equals_the_reference_on_adversarial_boxes(dtype, data, threshold):
    b, s = data.draw(adversarial(dtype))
    assert_same_keep(b, s, threshold)


@FEW
@given(dtype=DTYPES, data=st.data(), threshold=THRESHOLDS)
def test_batched_nms_equals_the_reference_on_adversarial_boxes(dtype, data, threshold):
    b, s = data.draw(adversarial(dtype))
    labels = data.draw(st.sampled_from([[0], [3, -7], [0, 1, 2, 3], [10**12, 5, -(10**12)]]))
    idxs = data.draw(hnp.arrays(np.int64, len(b), elements=st.sampled_from(labels)))
    assert_same_keep(b, s, threshold, idxs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nms_decides_ious_on_the_threshold_as_the_reference(dtype):
    # Box pairs whose IoU is k / 100 with a 10 x 10 box: 0.7 is not a float32, so the
    # float32 IoU of 70 / 100 sits just below the float64 threshold and must not suppress.
    rows = []
    for k in range(1, 101):
        x = 20.0 * k
        rows += [[x, 0, x + 10, 10], [x, 0, x + 10, k / 10]]
    b = np.array(rows, dtype)
    s = np.tile(np.array([1.0, 0.5], dtype), 100)
    for threshold in (0.3, 0.5, 0.69, 0.7, 0.71, np.float32(0.7), np.nextafter(0.7, 1)):
        assert_same_keep(b, s, float(threshold))


@given(
    iou=st.floats(0, 1, width=32),
    threshold=st.one_of(st.floats(0, 1), st.floats(0, 1, width=32)),
    dtype=DTYPES,
)
def test_the_kernel_threshold_decides_as_the_float64_comparison(iou, threshold, dtype):
    t = numba_boxes._threshold_in(np.dtype(dtype), threshold)
    assert t.dtype == dtype
    x = dtype(iou)
    assert bool(x > t) == bool(np.float64(x) > threshold)


@pytest.mark.parametrize("threshold", [0.0, 0.01])
def test_nms_sees_overlaps_of_a_hair_across_tiles(threshold):
    # 30 x 30 boxes of side 10 every 9.75 px: each overlaps its neighbours by 0.25 px
    # (IoU 0.0127 side by side), in every direction, so any tile skipped for being "just
    # out of reach" changes the keep list at threshold 0.
    rng = np.random.default_rng(6)
    corner = np.stack(np.meshgrid(np.arange(30), np.arange(30)), -1).reshape(-1, 2) * 9.75
    b = np.concatenate([corner, corner + 10.0], axis=1).astype(np.float32)
    for s in (rng.random(900), np.ones(900), np.arange(900.0)[::-1]):
        assert_same_keep(b, s.astype(np.float32), threshold)
        assert_same_keep(b[::-1].copy(), s.astype(np.float32), threshold)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nms_equals_the_reference_near_the_largest_float(dtype):
    # Centres and extents that overflow if computed carelessly (x1 + x2, x2 - x1).
    big = np.finfo(dtype).max / 4
    rng = np.random.default_rng(3)
    b = random_boxes(rng, 200, image_size=(300, 300), min_size=5, max_size=60, dtype=dtype)
    b = np.concatenate([b, np.array([[-big, -big, big, big], [0, 0, big, big]], dtype)])
    s = rng.random(len(b)).astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        for threshold in (0.0, 0.5):
            assert_same_keep(b, s, threshold)


def test_nms_equals_the_reference_on_a_large_sparse_problem():
    # The benchmark's problem at a third of its size: many tiles and groups, both ops.
    rng = np.random.default_rng(4)
    b = random_boxes(rng, 1700, image_size=(1000, 1000), min_size=10, max_size=200)
    s = rng.random(1700).astype(np.float32)
    for threshold in (0.5, 0.7):
        assert_same_keep(b, s, threshold)
        assert_same_keep(b, s, threshold, rng.integers(0, 5, 1700))


def test_nms_tests_only_tiles_it_can_overlap():
    # Spread-out boxes: the tiles skip most pairs, yet cover every intersecting pair
    # (the keep list above is exact; here, the work is far below all pairs).
    rng = np.random.default_rng(5)
    b = random_boxes(rng, 3000, image_size=(1000, 1000), min_size=10, max_size=100)
    s = rng.random(3000).astype(np.float32)
    evaluations = numba_boxes.nms_iou_evaluations(b, score_order(s), 0.7)
    assert 0 < evaluations < 0.25 * 3000 * 2999 / 2
