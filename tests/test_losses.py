import math
import pathlib

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from gradcheck import numerical_grad
from hypothesis import given
from hypothesis import strategies as st

from tinymaskrcnn import losses as L

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "losses.npz"
# torch computed the fixture in float64, as we do: equal to rounding (sums in another
# order). Relative only: the mask loss's gradients are ~1e-4, so any atol would be loose;
# entries torch leaves at exactly 0 (other classes' channels) must be 0 here too.
F64 = {"rtol": 1e-10, "atol": 0}


# --- hand-computed values ---------------------------------------------------------


def test_smooth_l1_is_quadratic_below_beta_and_linear_above():
    # d = 0.05 < 1/9: 0.5 * 0.05^2 * 9; d = 1: 1 - 0.5/9.
    value = L.smooth_l1(np.array([0.05, 1.0]), np.zeros(2))
    assert value == pytest.approx(0.5 * 0.0025 * 9 + 1 - 0.5 / 9)


def test_smooth_l1_with_beta_zero_is_l1():
    assert L.smooth_l1(np.array([-2.0, 3.0]), np.zeros(2), beta=0.0) == pytest.approx(5.0)


def test_cross_entropy_of_uniform_logits_is_log_of_the_class_count():
    assert L.cross_entropy(np.zeros((3, 4)), np.array([0, 1, 3])) == pytest.approx(math.log(4))


def test_bce_with_logits_at_zero_logit_is_log_two():
    assert L.bce_with_logits(np.zeros(5), np.array([0, 1, 0.5, 1, 0])) == pytest.approx(math.log(2))


def test_bce_with_logits_is_finite_for_huge_logits():
    value = L.bce_with_logits(np.array([1000.0, -1000.0]), np.array([0.0, 1.0]))
    assert value == pytest.approx(1000.0)
    grad = L.bce_with_logits_backward(np.array([1000.0, -1000.0]), np.array([0.0, 1.0]))
    np.testing.assert_allclose(grad, [0.5, -0.5])


def test_sigmoid_mask_loss_reads_only_the_gt_class_channel():
    logits = np.zeros((1, 3, 2, 2))
    logits[0, 0] = 50.0  # a confident wrong background channel must not matter
    targets = np.ones((1, 2, 2))
    assert L.mask_loss_sigmoid(logits, np.array([2]), targets) == pytest.approx(math.log(2))
    grad = L.mask_loss_sigmoid_backward(logits, np.array([2]), targets)
    assert np.all(grad[0, :2] == 0) and np.all(grad[0, 2] < 0)


def test_softmax_mask_loss_gives_every_channel_a_gradient():
    logits = np.zeros((1, 3, 2, 2))
    grad = L.mask_loss_softmax_backward(logits, np.array([2]), np.ones((1, 2, 2)))
    assert np.all(grad[0, 0] > 0) and np.all(grad[0, 1] > 0) and np.all(grad[0, 2] < 0)
    assert L.mask_loss_softmax(logits, np.array([2]), np.ones((1, 2, 2))) == pytest.approx(
        math.log(3)
    )


# --- empty inputs -----------------------------------------------------------------


def test_empty_inputs_give_zero_loss_and_empty_gradients():
    assert L.smooth_l1(np.zeros((0, 4)), np.zeros((0, 4))) == 0.0
    assert L.cross_entropy(np.zeros((0, 5)), np.zeros(0, np.int64)) == 0.0
    assert L.bce_with_logits(np.zeros(0), np.zeros(0)) == 0.0
    for name in ("sigmoid", "softmax"):
        loss, backward = L.MASK_LOSSES[name]
        args = (np.zeros((0, 4, 28, 28), np.float32), np.zeros(0, np.int64), np.zeros((0, 28, 28)))
        assert loss(*args) == 0.0
        grad = backward(*args)
        assert grad.shape == (0, 4, 28, 28) and grad.dtype == np.float32
    assert L.cross_entropy_backward(np.zeros((0, 5)), np.zeros(0, np.int64)).shape == (0, 5)


# --- bad input --------------------------------------------------------------------


def test_mismatched_shapes_are_a_value_error():
    with pytest.raises(ValueError, match=r"same shape; got \(3, 4\) and \(3,\)"):
        L.smooth_l1(np.zeros((3, 4)), np.zeros(3))


def test_class_index_out_of_range_is_a_value_error():
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 4\]"):
        L.cross_entropy(np.zeros((2, 5)), np.array([0, 5]))


def test_background_label_in_the_mask_loss_is_a_value_error():
    with pytest.raises(ValueError, match="labels must be foreground classes"):
        L.mask_loss_sigmoid(np.zeros((1, 3, 4, 4)), np.array([0]), np.zeros((1, 4, 4)))


# --- gradients by central differences (float64) ------------------------------------

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_smooth_l1_backward_matches_central_differences(reduction):
    x = RNG.normal(0, 0.5, (6, 4))
    y = RNG.normal(0, 0.5, (6, 4))
    num = numerical_grad(lambda: L.smooth_l1(x, y, reduction=reduction), x)
    np.testing.assert_allclose(L.smooth_l1_backward(x, y, reduction=reduction), num, atol=1e-6)


def test_cross_entropy_backward_matches_central_differences():
    x = RNG.normal(0, 2, (5, 4))
    t = RNG.integers(0, 4, 5)
    num = numerical_grad(lambda: L.cross_entropy(x, t), x)
    np.testing.assert_allclose(L.cross_entropy_backward(x, t), num, atol=1e-7)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_bce_with_logits_backward_matches_central_differences(reduction):
    x = RNG.normal(0, 3, (12,))
    t = RNG.uniform(0, 1, (12,))
    num = numerical_grad(lambda: L.bce_with_logits(x, t, reduction=reduction), x)
    got = L.bce_with_logits_backward(x, t, reduction=reduction)
    np.testing.assert_allclose(got, num, atol=1e-7)


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_mask_loss_backward_matches_central_differences(kind):
    loss, backward = L.MASK_LOSSES[kind]
    x = RNG.normal(0, 2, (3, 4, 5, 5))
    labels = np.array([1, 3, 2])
    t = RNG.uniform(0, 1, (3, 5, 5))
    num = numerical_grad(lambda: loss(x, labels, t), x)
    np.testing.assert_allclose(backward(x, labels, t), num, atol=1e-7)


def test_backward_scales_with_the_upstream_gradient():
    x = RNG.normal(0, 1, (4, 3))
    t = RNG.integers(0, 3, 4)
    np.testing.assert_allclose(
        L.cross_entropy_backward(x, t, grad_out=2.5), 2.5 * L.cross_entropy_backward(x, t)
    )


# --- properties ---------------------------------------------------------------------

finite = st.floats(-30, 30, allow_nan=False, width=64)


@given(x=hnp.arrays(np.float64, st.integers(1, 20), elements=finite))
def test_bce_is_minimal_over_logits_where_the_sigmoid_equals_the_target(x):
    t = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(L.bce_with_logits_backward(x, t), 0, atol=1e-12)
    for step in (-0.1, 0.1):
        assert L.bce_with_logits(x, t) <= L.bce_with_logits(x + step, t) + 1e-12


@given(
    x=hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(2, 6)), elements=finite),
    data=st.data(),
)
def test_cross_entropy_gradient_rows_sum_to_zero(x, data):
    t = np.array(
        data.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=len(x), max_size=len(x)))
    )
    np.testing.assert_allclose(L.cross_entropy_backward(x, t).sum(axis=1), 0, atol=1e-12)
    assert L.cross_entropy(x, t) >= 0


@given(d=hnp.arrays(np.float64, st.integers(1, 20), elements=finite))
def test_smooth_l1_lies_between_l1_minus_half_beta_and_l1(d):
    beta = 1 / 9
    value = L.smooth_l1(d, np.zeros_like(d), beta=beta)
    l1 = np.abs(d).sum()
    assert l1 - 0.5 * beta * d.size - 1e-9 <= value <= l1 + 1e-9


# --- parity with torch.nn.functional (committed fixture) ---------------------------


@pytest.fixture(scope="module")
def fx():
    return np.load(FIXTURE)


def test_smooth_l1_equals_torch(fx):
    x, y = fx["sl1_input"], fx["sl1_target"]
    assert L.smooth_l1(x, y) == pytest.approx(float(fx["sl1_value"]), rel=1e-12)
    np.testing.assert_allclose(L.smooth_l1_backward(x, y), fx["sl1_grad"], **F64)


def test_cross_entropy_equals_torch(fx):
    x, t = fx["ce_logits"], fx["ce_labels"]
    assert L.cross_entropy(x, t) == pytest.approx(float(fx["ce_value"]), rel=1e-12)
    np.testing.assert_allclose(L.cross_entropy_backward(x, t), fx["ce_grad"], **F64)


def test_bce_with_logits_equals_torch(fx):
    x, t = fx["bce_logits"], fx["bce_targets"]
    assert L.bce_with_logits(x, t) == pytest.approx(float(fx["bce_value"]), rel=1e-12)
    np.testing.assert_allclose(L.bce_with_logits_backward(x, t), fx["bce_grad"], **F64)


def test_sigmoid_mask_loss_equals_torchvisions_maskrcnn_loss(fx):
    args = fx["mask_logits"], fx["mask_labels"], fx["mask_targets"]
    assert L.mask_loss_sigmoid(*args) == pytest.approx(float(fx["mask_value"]), rel=1e-12)
    np.testing.assert_allclose(L.mask_loss_sigmoid_backward(*args), fx["mask_grad"], **F64)
