"""matching.py: Matcher codes and low-quality matches, the balanced sampler, and parity
with torchvision's Matcher on IoU matrices full of ties."""

import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinymaskrcnn.matching import BalancedPositiveNegativeSampler, Matcher

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "matching.npz"
RPN = Matcher(0.7, 0.3, allow_low_quality_matches=True)
HEAD = Matcher(0.5, 0.5, allow_low_quality_matches=False)

iou_matrices = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 6), st.integers(0, 40)),
    elements=st.integers(0, 20).map(lambda k: k / 20),  # a 0.05 grid: ties are common
)

# --- hand-computed cases ---------------------------------------------------------------


def test_each_anchor_gets_its_best_gt_or_a_code_by_threshold():
    iou = np.array([[0.9, 0.5, 0.1, 0.0], [0.2, 0.6, 0.75, 0.29]])
    np.testing.assert_array_equal(Matcher(0.7, 0.3)(iou), [0, -2, 1, -1])


def test_the_low_threshold_is_inclusive_and_the_high_threshold_is_inclusive():
    iou = np.array([[0.3, 0.7, 0.2999]])
    np.testing.assert_array_equal(Matcher(0.7, 0.3)(iou), [-2, 0, -1])


def test_a_gt_whose_best_anchor_is_weak_rescues_that_anchor_and_its_ties():
    # gt 1 reaches at most 0.4, on anchors 1 and 2 (a tie): both become matches.
    iou = np.array([[0.8, 0.1, 0.1, 0.0], [0.0, 0.4, 0.4, 0.2]])
    np.testing.assert_array_equal(RPN(iou), [0, 1, 1, -1])
    np.testing.assert_array_equal(Matcher(0.7, 0.3)(iou), [0, -2, -2, -1])


def test_a_rescued_anchor_gets_its_own_best_gt_not_the_gt_that_rescued_it():
    # Anchor 1 is gt 1's best (0.5) but overlaps gt 0 more (0.6): it is matched to gt 0.
    iou = np.array([[0.9, 0.6], [0.1, 0.5]])
    np.testing.assert_array_equal(RPN(iou), [0, 0])


def test_a_gt_overlapping_nothing_rescues_every_anchor_like_torchvision():
    iou = np.array([[0.2, 0.0, 0.9], [0.0, 0.0, 0.0]])
    # gt 1's highest IoU is 0, reached by every anchor: all restored to their best gt.
    np.testing.assert_array_equal(RPN(iou), [0, 0, 0])


def test_no_ground_truth_makes_every_anchor_background():
    matches = RPN(np.zeros((0, 5), np.float32))
    np.testing.assert_array_equal(matches, [-1] * 5)
    assert matches.dtype == np.int64


def test_no_anchors_gives_an_empty_match_vector():
    assert RPN(np.zeros((3, 0))).shape == (0,)


def test_the_sampler_takes_half_positives_when_there_are_enough():
    labels = np.array([1] * 10 + [0] * 10 + [-1] * 5)
    pos, neg = BalancedPositiveNegativeSampler(8, 0.5)(labels, np.random.default_rng(0))
    assert pos.sum() == 4 and neg.sum() == 4
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()


def test_the_sampler_fills_with_negatives_when_positives_run_short():
    labels = np.array([2] + [0] * 30)
    pos, neg = BalancedPositiveNegativeSampler(16, 0.25)(labels, np.random.default_rng(1))
    assert pos.sum() == 1 and neg.sum() == 15


def test_the_sampler_is_reproducible_from_the_generator():
    labels = np.array([1, 0] * 50)
    sampler = BalancedPositiveNegativeSampler(20, 0.5)
    a = sampler(labels, np.random.default_rng(7))
    b = sampler(labels, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


# --- bad input -------------------------------------------------------------------------


def test_thresholds_must_be_ordered_and_non_negative():
    with pytest.raises(ValueError, match="0 <= low_threshold <= high_threshold"):
        Matcher(0.3, 0.7)
    with pytest.raises(ValueError, match="0 <= low_threshold"):
        Matcher(0.5, -0.1)


def test_the_matcher_rejects_a_vector_instead_of_a_matrix():
    with pytest.raises(ValueError, match=r"iou must be \(G, N\).*got shape \(4,\)"):
        RPN(np.zeros(4))


def test_the_matcher_rejects_nan():
    with pytest.raises(ValueError, match="iou must be finite"):
        RPN(np.array([[0.5, np.nan]]))


def test_the_sampler_needs_a_generator_not_a_seed():
    with pytest.raises(ValueError, match="rng must be a np.random.Generator; got int"):
        BalancedPositiveNegativeSampler(4, 0.5)(np.zeros(3, np.int64), 0)


def test_the_sampler_rejects_float_labels():
    with pytest.raises(ValueError, match=r"labels must be \(N,\) int"):
        BalancedPositiveNegativeSampler(4, 0.5)(np.zeros(3), np.random.default_rng())


# --- properties ------------------------------------------------------------------------


@given(iou=iou_matrices, low=st.sampled_from([0.0, 0.3, 0.5]), gap=st.sampled_from([0, 0.2]))
def test_codes_agree_with_the_best_iou_and_the_thresholds(iou, low, gap):
    high = low + gap
    matches = Matcher(high, low)(iou)
    best = iou.max(axis=0) if iou.shape[1] else np.zeros(0)
    np.testing.assert_array_equal(matches == -1, best < low)
    np.testing.assert_array_equal(matches == -2, (best >= low) & (best < high))
    matched = matches >= 0
    np.testing.assert_array_equal(iou[matches[matched], np.flatnonzero(matched)], best[matched])


@given(iou=iou_matrices)
def test_with_low_quality_matches_every_gt_has_its_best_anchors_matched(iou):
    matches = RPN(iou)
    if iou.shape[1] == 0:
        return
    best_per_gt = iou.max(axis=1, keepdims=True)
    assert (matches[(iou == best_per_gt).any(axis=0)] >= 0).all()


@given(iou=iou_matrices)
def test_low_quality_matches_only_turn_codes_into_matches(iou):
    plain = Matcher(0.7, 0.3)(iou)
    rescued = RPN(iou)
    changed = plain != rescued
    assert (plain[changed] < 0).all()
    np.testing.assert_array_equal(rescued[~changed], plain[~changed])


@given(
    labels=hnp.arrays(np.int64, st.integers(0, 200), elements=st.integers(-1, 3)),
    batch=st.integers(0, 64),
    fraction=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_sampler_counts_follow_the_batch_and_the_fraction(labels, batch, fraction, seed):
    pos, neg = BalancedPositiveNegativeSampler(batch, fraction)(labels, np.random.default_rng(seed))
    n_pos, n_neg = (labels >= 1).sum(), (labels == 0).sum()
    assert pos.sum() == min(n_pos, int(batch * fraction))
    assert neg.sum() == min(n_neg, batch - pos.sum())
    assert not (pos & neg).any()
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()


# --- torchvision parity ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tv():
    return dict(np.load(FIXTURES))


@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("name", ["rpn", "head"])
def test_matcher_equals_torchvision_ties_included(tv, case, name):
    matcher = RPN if name == "rpn" else HEAD
    np.testing.assert_array_equal(matcher(tv[f"case{case}_iou"]), tv[f"case{case}_{name}"])
