"""The CUDA layer kernels (kernels/cuda_layers.py) equal the NumPy reference bit for bit.

Each computes one output element per thread with the reference's operations in the
reference's order, so the demand is equality of bytes, not closeness: the bias + shortcut
+ ReLU epilogue, ReLU, max pooling (with and without its argmax) and the FPN's top-down
add, on exact-2x and odd sizes. They run on device arrays only: a host array gets None
from the kernel, the reference runs and nothing is copied.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import POOLS

from tinymaskrcnn import kernels, nn
from tinymaskrcnn.fpn import add_top_down
from tinymaskrcnn.kernels import count_transfers, use_backend

pytestmark = pytest.mark.cuda

DTYPES = [np.float32, np.float64]


def on_device(fn, *arrays):
    """fn(*arrays) under "cuda" with the arrays on the device; the result on the host."""
    with use_backend("cuda"):
        out = fn(*[kernels.to_device(a) if isinstance(a, np.ndarray) else a for a in arrays])
    if isinstance(out, tuple):
        return tuple(np.array(kernels.to_host(o)) for o in out)
    return np.array(kernels.to_host(out))


def assert_same_bytes(got, expected):
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes(), np.flatnonzero(got != expected)[:8]


@settings(max_examples=8, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 5)),
    residual=st.booleans(),
    relu=st.booleans(),
    scaled=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_bias_add_relu_on_the_device_equals_the_reference(
    shape, residual, relu, scaled, dtype, seed
):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal(shape).astype(dtype)
    bias = rng.standard_normal(shape[1]).astype(dtype)
    res = rng.standard_normal(shape).astype(dtype) if residual else None
    scale = rng.standard_normal(shape[1]).astype(dtype) if scaled else None
    expected = nn.bias_add_relu_(y.copy(), bias, res, relu, scale)

    def fused(d_y, d_res):
        out = nn.bias_add_relu_(d_y, bias, d_res, relu, scale)
        assert out is d_y  # in place, as the reference
        return out

    assert_same_bytes(on_device(fused, y, res), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_on_the_device_equals_the_reference_and_leaves_its_input(dtype):
    x = np.array([[-2.0, -0.0, 0.0, 1e-30, 3.0, np.nan, -np.inf, np.inf]], dtype)
    layer = nn.ReLU().eval()
    with use_backend("cuda"):
        d_x = kernels.to_device(x)
        got = kernels.to_host(layer(d_x))
    np.testing.assert_array_equal(got, layer(x))  # NaN where NaN, as np.maximum
    np.testing.assert_array_equal(kernels.to_host(d_x), x)


# (kernel, stride, padding): ResNet's stem, the FPN's P6, and windows that overlap.
@pytest.mark.parametrize("kernel, stride, padding", POOLS)
@pytest.mark.parametrize("argmax", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_on_the_device_equals_the_reference(kernel, stride, padding, argmax, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    x[0, 0, 1, :3] = x[0, 0, 1, 0]  # ties: the first in scan order wins
    x[1, 2, 3:5, 2:4] = np.nan  # inference propagates it; with argmax it never wins
    expected = nn.max_pool2d(x, kernel, stride, padding, argmax=argmax)
    got = on_device(lambda d: nn.max_pool2d(d, kernel, stride, padding, argmax=argmax), x)
    if argmax:
        assert_same_bytes(got[1], expected[1])
        got, expected = got[0], expected[0]
    np.testing.assert_array_equal(got, expected)  # NaN-aware; then the bytes elsewhere
    finite = ~np.isnan(expected)
    assert_same_bytes(got[finite], expected[finite])


@pytest.mark.parametrize(
    "fine, coarse", [((8, 6), (4, 3)), ((7, 5), (4, 3)), ((5, 9), (5, 4)), ((3, 3), (3, 3))]
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_top_down_add_on_the_device_equals_the_reference(fine, coarse, dtype):
    # Exact 2x (the model's padded sizes), odd sizes whose nearest rows come from the
    # float32 scale, a 1x side and an equal size.
    rng = np.random.default_rng(6)
    lateral = rng.standard_normal((2, 3, *fine)).astype(dtype)
    top = rng.standard_normal((2, 3, *coarse)).astype(dtype)
    expected = add_top_down(lateral.copy(), top)
    got = on_device(lambda d_l, d_t: add_top_down(d_l, d_t), lateral, top)
    assert_same_bytes(got, expected)


def test_on_host_arrays_the_layer_kernels_decline_and_nothing_is_copied():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 4, 4))
    for op in ("bias_add_relu_", "relu", "max_pool2d", "add_top_down"):
        kernel = kernels.kernel(op, "cuda")
        args = {
            "bias_add_relu_": (x.copy(), np.zeros(2)),
            "relu": (x,),
            "max_pool2d": (x, (3, 3), (2, 2), (1, 1), (2, 2), False),
            "add_top_down": (x.copy(), x[:, :, :2, :2]),
        }[op]
        with use_backend("cuda"), count_transfers() as copies:
            assert kernel(*args) is None, op
        assert copies.total == 0, op
    with use_backend("cuda"), count_transfers() as copies:
        np.testing.assert_array_equal(nn.ReLU().eval()(x), np.maximum(x, 0))
        np.testing.assert_array_equal(nn.max_pool2d(x, 1, 2, 0, argmax=False), x[:, :, ::2, ::2])
    assert copies.total == 0
