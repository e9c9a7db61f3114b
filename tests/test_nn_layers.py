"""Linear, ReLU, max pooling, nearest upsampling, batch norms: values and gradients."""

import pathlib

import numpy as np
import pytest
from gradcheck import check_module_gradients, numerical_grad

from tinymaskrcnn import nn
from tinymaskrcnn.nn.layers import nearest_indices

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
# torch computed the fixture in float64, as we do: equal to rounding (sums in another
# order), rtol and atol both stated (assert_allclose alone would allow rtol 1e-7).
F64 = {"rtol": 1e-10, "atol": 1e-12}


def test_max_pool_of_a_4x4_arange_takes_each_windows_bottom_right():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y, argmax = nn.max_pool2d(x, 2, 2)
    np.testing.assert_array_equal(y[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(argmax[0, 0], [[5, 7], [13, 15]])


def test_max_pool_with_kernel_one_and_stride_two_keeps_every_other_cell():
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 4))
    np.testing.assert_array_equal(nn.max_pool2d(x, 1, 2)[0], x[:, :, ::2, ::2])


def test_max_pool_forward_and_backward_match_torch_including_ties():
    f = np.load(FIXTURES / "nn_ops.npz")
    y, argmax = nn.max_pool2d(f["pool_x"], 3, 2, 1)
    np.testing.assert_array_equal(y, f["pool_y"])
    gx = nn.max_pool2d_backward(f["pool_gy"], argmax, f["pool_x"].shape)
    np.testing.assert_allclose(gx, f["pool_gx"], **F64)


def test_nearest_indices_from_3_to_5_repeat_the_first_two_rows():
    np.testing.assert_array_equal(nearest_indices(3, 5), [0, 0, 1, 1, 2])


@pytest.mark.parametrize("case", range(5))
def test_nearest_upsampling_to_odd_sizes_matches_torch(case):
    f = np.load(FIXTURES / "nn_ops.npz")
    x, y = f[f"up{case}_x"], f[f"up{case}_y"]
    np.testing.assert_array_equal(nn.upsample_nearest(x, y.shape[2:]), y)


def test_nearest_upsampling_backward_matches_central_differences():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 3, 4))
    r = rng.standard_normal((1, 2, 7, 9))
    g = nn.upsample_nearest_backward(r, (3, 4))
    num = numerical_grad(lambda: float((nn.upsample_nearest(x, (7, 9)) * r).sum()), x)
    np.testing.assert_allclose(g, num, rtol=1e-6)


def test_linear_layer_gradients_match_central_differences():
    rng = np.random.default_rng(0)
    layer = nn.Linear(5, 3, rng=rng).astype(np.float64)
    check_module_gradients(layer, rng.standard_normal((4, 5)), rng)


def test_relu_layer_gradients_match_central_differences():
    rng = np.random.default_rng(1)
    check_module_gradients(nn.ReLU(), rng.standard_normal((2, 3, 4, 4)), rng)


def test_max_pool_layer_gradients_match_central_differences():
    rng = np.random.default_rng(2)
    check_module_gradients(nn.MaxPool2d(3, 2, 1), rng.standard_normal((2, 2, 7, 6)), rng)


@pytest.mark.parametrize(
    "kernel,stride,padding,shape",
    [
        (2, 2, 0, (1, 2, 5, 7)),
        (3, 1, 1, (2, 1, 4, 5)),
        (1, 2, 0, (1, 2, 5, 4)),
        (2, 3, 1, (1, 1, 1, 7)),
    ],
)
def test_max_pool2d_backward_matches_central_differences(kernel, stride, padding, shape):
    # Non-overlapping, overlapping, P6's kernel 1 stride 2, and a one-row map; distinct
    # values, so each max is differentiable. Cells no window picks get 0.
    rng = np.random.default_rng(kernel + 3 * stride)
    x = rng.permutation(np.prod(shape)).reshape(shape) / 7.0 + rng.uniform(0, 0.01, shape)
    y, argmax = nn.max_pool2d(x, kernel, stride, padding)
    r = rng.standard_normal(y.shape)
    g = nn.max_pool2d_backward(r, argmax, x.shape)
    num = numerical_grad(lambda: float((nn.max_pool2d(x, kernel, stride, padding)[0] * r).sum()), x)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-9)


def test_frozen_batch_norm_gradients_match_central_differences():
    rng = np.random.default_rng(3)
    bn = nn.FrozenBatchNorm2d(3).astype(np.float64)
    bn.weight, bn.bias = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    bn.running_mean, bn.running_var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    assert check_module_gradients(bn, rng.standard_normal((2, 3, 4, 5)), rng) == 0


def test_frozen_batch_norm_applies_the_stored_statistics():
    bn = nn.FrozenBatchNorm2d(1, eps=0.0)
    bn.weight, bn.bias = np.array([2.0]), np.array([1.0])
    bn.running_mean, bn.running_var = np.array([3.0]), np.array([4.0])
    np.testing.assert_allclose(bn(np.full((1, 1, 1, 1), 5.0)), [[[[(5 - 3) * 2 / 2 + 1]]]])


def test_batch_norm_in_training_mode_gradients_match_central_differences():
    rng = np.random.default_rng(4)
    bn = nn.BatchNorm2d(3).astype(np.float64)
    bn.weight.data, bn.bias.data = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    assert check_module_gradients(bn, rng.standard_normal((2, 3, 4, 3)) * 2 + 1, rng) == 2


def test_batch_norm_normalises_each_channel_and_updates_running_statistics_as_torch():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 2, 3, 3)) * 3 + 2
    bn = nn.BatchNorm2d(2).astype(np.float64)
    y = bn(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-4)
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1))
    assert int(bn.num_batches_tracked) == 1


def test_batch_norm_in_eval_mode_uses_running_statistics():
    bn = nn.BatchNorm2d(1).eval()
    bn.running_mean, bn.running_var = np.array([1.0], np.float32), np.array([4.0], np.float32)
    np.testing.assert_allclose(bn(np.full((1, 1, 2, 2), 3.0, np.float32)), 1.0, rtol=1e-5)


def test_relu_in_eval_mode_keeps_nothing():
    relu = nn.ReLU().eval()
    np.testing.assert_array_equal(relu(np.array([[-1.0, 2.0]])), [[0.0, 2.0]])
    assert relu._saved == []


@pytest.mark.parametrize(
    "layer,shape",
    [(nn.FrozenBatchNorm2d(3), (1, 4, 2, 2)), (nn.BatchNorm2d(3), (2, 3, 2)),
     (nn.Linear(3, 2), (2, 4)), (nn.MaxPool2d(2), (2, 2))],
)  # fmt: skip
def test_wrong_shapes_raise_a_clear_error(layer, shape):
    with pytest.raises(ValueError, match="got shape"):
        layer(np.zeros(shape, np.float32))


def test_frozen_batch_norm_loads_a_batch_norm_checkpoint():
    trained = nn.BatchNorm2d(2)
    trained.running_mean = np.array([1.0, 2.0], np.float32)
    frozen = nn.FrozenBatchNorm2d(2)
    assert "num_batches_tracked" in trained.state_dict()
    frozen.load_state_dict(trained.state_dict())
    np.testing.assert_array_equal(frozen.running_mean, [1.0, 2.0])


def test_nearest_upsampling_backward_by_exactly_two_matches_central_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, 3, 4))
    r = rng.standard_normal((2, 1, 6, 8))
    g = nn.upsample_nearest_backward(r, (3, 4))
    num = numerical_grad(lambda: float((nn.upsample_nearest(x, (6, 8)) * r).sum()), x)
    np.testing.assert_allclose(g, num, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nearest_upsampling_backward_by_two_adds_each_blocks_columns_then_its_rows(dtype):
    # Each input cell's gradient is (g00 + g01) + (g10 + g11): exactly that sum's bits,
    # non-finite values included, and the one-hot route's values.
    rng = np.random.default_rng(4)
    r = rng.standard_normal((2, 3, 10, 14)).astype(dtype)
    r.reshape(-1)[:4] = [np.inf, -0.0, -0.0, 1e-30]
    g = nn.upsample_nearest_backward(r, (5, 7))
    by_columns = r.reshape(2, 3, 5, 2, 7, 2).sum(axis=5)
    expected = by_columns[:, :, :, 0] + by_columns[:, :, :, 1]
    assert g.dtype == dtype and g.flags.c_contiguous and g.tobytes() == expected.tobytes()
    rows = np.repeat(np.eye(5, dtype=dtype), 2, axis=0)  # (10, 5) one-hot, as the general route
    cols = np.repeat(np.eye(7, dtype=dtype), 2, axis=0)
    np.testing.assert_allclose(g[1], rows.T @ r[1] @ cols, rtol=1e-6, atol=1e-6)  # finite


@pytest.mark.parametrize("in_hw,out_hw", [((5, 7), (3, 4)), ((2, 6), (5, 3)), ((1, 1), (3, 2))])
def test_nearest_resampling_backward_to_smaller_and_mixed_sizes_matches_central_differences(
    in_hw, out_hw
):
    # Shrinking skips input cells (their gradient is 0); growing one axis while shrinking
    # the other mixes both rules.
    rng = np.random.default_rng(sum(in_hw))
    x = rng.standard_normal((1, 2, *in_hw))
    r = rng.standard_normal((1, 2, *out_hw))
    g = nn.upsample_nearest_backward(r, in_hw)
    num = numerical_grad(lambda: float((nn.upsample_nearest(x, out_hw) * r).sum()), x)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-9)
