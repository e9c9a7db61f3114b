"""The convolution kernels (numba_conv.py, cuda_conv.py) equal the NumPy reference.

numba: im2col and col2im on random geometries and row bands, Winograd F(2x2, 3x3) for
the stride-1 3x3 convolutions (any size and padding, one band or many), then whole
layers run under the numba backend. cuda (Numba's simulator; tiny shapes, since the simulator runs
one Python thread per CUDA thread): conv2d and conv2d_backward, NumPy and device arrays.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import cuda
from strategies import POOLS

from tinymaskrcnn import kernels, nn
from tinymaskrcnn.fpn import resnet_fpn_backbone
from tinymaskrcnn.kernels import numba_layers, use_backend
from tinymaskrcnn.nn import conv as conv_mod

DTYPES = st.sampled_from([np.float32, np.float64])


@st.composite
def geometries(draw):
    k = draw(st.integers(1, 3))
    s, d = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    hp = draw(st.integers(d * (k - 1) + 1, 10))
    wp = draw(st.integers(d * (k - 1) + 1, 10))
    ho = (hp - d * (k - 1) - 1) // s + 1
    r0 = draw(st.integers(0, ho - 1))
    r1 = draw(st.integers(r0 + 1, ho))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), hp, wp)
    return shape, (k, k), (s, s), (d, d), (r0, r1)


def reference(fn, *args, **kwargs):
    with use_backend("numpy"):
        return fn(*args, **kwargs)


@given(geometry=geometries(), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_numba_im2col_equals_the_reference(geometry, dtype, seed):
    shape, k, s, d, rows = geometry
    xp = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    fast = kernels.kernel("im2col", "numba")(xp, k, s, d, rows)
    np.testing.assert_array_equal(fast, reference(conv_mod.im2col, xp, k, s, d, rows))


@given(geometry=geometries(), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_numba_col2im_equals_the_reference(geometry, dtype, seed):
    shape, k, s, d, rows = geometry
    rng = np.random.default_rng(seed)
    n, c, hp, wp = shape
    wo = (wp - d[1] * (k[1] - 1) - 1) // s[1] + 1
    cols = rng.standard_normal((n, c * k[0] * k[1], (rows[1] - rows[0]) * wo)).astype(dtype)
    start = rng.standard_normal(shape).astype(dtype)
    fast = kernels.kernel("col2im", "numba")(cols, start.copy(), k, s, d, rows)
    slow = reference(conv_mod.col2im, cols, start.copy(), k, s, d, rows)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-6)


def test_numba_col2im_adds_into_a_strided_view_of_a_larger_map():
    # The kernel works on a contiguous map; a view (every other channel) still gets its sum.
    rng = np.random.default_rng(1)
    cols = rng.standard_normal((2, 3 * 9, 4 * 5)).astype(np.float32)
    start = rng.standard_normal((2, 6, 6, 7)).astype(np.float32)
    fast, slow = start.copy(), start.copy()
    geometry = ((3, 3), (1, 1), (1, 1), (0, 4))
    kernels.kernel("col2im", "numba")(cols, fast[:, ::2], *geometry)
    reference(conv_mod.col2im, cols, slow[:, ::2], *geometry)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(fast[:, 1::2], start[:, 1::2])


def test_numba_im2col_writes_into_a_given_buffer():
    xp = np.arange(2 * 6 * 7, dtype=np.float32).reshape(1, 2, 6, 7)
    buffer = np.full(1000, -1.0, np.float32)
    cols = kernels.kernel("im2col", "numba")(xp, (3, 3), (1, 1), (1, 1), (0, 4), buffer)
    assert np.shares_memory(cols, buffer)
    np.testing.assert_array_equal(
        cols, reference(conv_mod.im2col, xp, (3, 3), (1, 1), (1, 1), (0, 4))
    )


def _set_bands(patch, numba_conv, bands):
    """Winograd's bands of tile rows: all rows in one, one row per band (every band
    boundary exercised), or a few tiles' worth of rows (bands that end inside an image
    or run across two)."""
    if bands == "one row":
        patch.setattr(numba_conv, "WINOGRAD_BAND_BYTES", 1)
    elif bands == "few tiles":
        patch.setattr(numba_conv, "WINOGRAD_BAND_TILES", 5)


@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 5), st.integers(1, 11), st.integers(1, 11)),
    out_channels=st.integers(1, 5),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    bias=st.booleans(),
    bands=st.sampled_from(["whole", "one row", "few tiles"]),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_numba_winograd_conv2d_equals_the_reference(
    shape, out_channels, padding, bias, bands, dtype, seed
):
    n, c, h, w = shape
    if h + 2 * padding[0] < 3 or w + 2 * padding[1] < 3:
        return  # no output: conv2d rejects it before any kernel runs
    numba_conv = pytest.importorskip("tinymaskrcnn.kernels.numba_conv")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    wt = rng.standard_normal((out_channels, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(out_channels).astype(dtype) if bias else None
    expected = reference(nn.conv2d, x, wt, b, 1, padding)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(numba_conv, "WINOGRAD_MIN_PRODUCT", 0)  # these sizes, too, on Winograd
        _set_bands(patch, numba_conv, bands)
        got = kernels.kernel("conv2d", "numba")(x, wt, b, (1, 1), padding, (1, 1), 1)
    assert got.dtype == dtype and got.shape == expected.shape
    # The transforms reorder the sums (4 x 4 tiles of inputs, the 1/2s of G): equal up to
    # rounding, at the scale of the terms summed.
    scale = np.abs(x).max() * np.abs(wt).sum(axis=(1, 2, 3)).max() + 1
    tol = 1e-13 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol * scale)


@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 5), st.integers(1, 11), st.integers(1, 11)),
    out_channels=st.integers(1, 5),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    bands=st.sampled_from(["whole", "one row", "few tiles"]),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_numba_winograd_conv2d_backward_equals_the_reference(
    shape, out_channels, padding, bands, dtype, seed
):
    # Under numba both gradients of a 3x3 stride-1 convolution run on Winograd: the input
    # gradient as the convolution with the turned filters (nn/conv.py), the weight
    # gradient by the transposed transforms (numba_conv.conv2d_weight_grad).
    n, c, h, w = shape
    ho, wo = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    if ho < 1 or wo < 1:
        return
    numba_conv = pytest.importorskip("tinymaskrcnn.kernels.numba_conv")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    wt = rng.standard_normal((out_channels, c, 3, 3)).astype(dtype)
    gy = rng.standard_normal((n, out_channels, ho, wo)).astype(dtype)
    expected = reference(nn.conv2d_backward, gy, x, wt, 1, padding)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(numba_conv, "WINOGRAD_MIN_PRODUCT", 0)
        _set_bands(patch, numba_conv, bands)
        fast_w = kernels.kernel("conv2d_weight_grad", "numba")
        assert fast_w(gy, x, wt.shape, (1, 1), padding, (1, 1), 1) is not None
        with use_backend("numba"):
            got = nn.conv2d_backward(gy, x, wt, 1, padding)
    tol = 1e-13 if dtype == np.float64 else 2e-6
    scales = (
        np.abs(gy).max() * np.abs(wt).sum(axis=(0, 2, 3)).max() + 1,  # grad_x's terms
        np.abs(gy).max() * np.abs(x).max() * n * ho * wo + 1,  # grad_w's
        np.abs(gy).max() * n * ho * wo + 1,
    )
    for name, a, b, scale in zip(("x", "weight", "bias"), got, expected, scales, strict=True):
        assert a.dtype == dtype and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale, err_msg=name)


@pytest.mark.parametrize(
    "kernel_size, stride, dilation, groups",
    [(1, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 1), (3, 1, 1, 2), (5, 1, 1, 1)],
)
def test_numba_conv2d_leaves_other_geometries_to_the_reference(
    kernel_size, stride, dilation, groups, monkeypatch
):
    # None tells nn.conv2d to run the reference (on the numba im2col); the result is
    # still the reference's. Every size would go to Winograd: only the geometry decides.
    monkeypatch.setattr(pytest.importorskip("tinymaskrcnn.kernels.numba_conv"),
                        "WINOGRAD_MIN_PRODUCT", 0)  # fmt: skip
    rng = np.random.default_rng(kernel_size + stride + dilation + groups)
    x = rng.standard_normal((1, 4, 12, 12)).astype(np.float32)
    wt = rng.standard_normal((2, 4 // groups, kernel_size, kernel_size)).astype(np.float32)
    geometry = ((stride,) * 2, (1, 1), (dilation,) * 2, groups)
    assert kernels.kernel("conv2d", "numba")(x, wt, None, *geometry) is None
    with use_backend("numba"):
        got = nn.conv2d(x, wt, None, stride, 1, dilation, groups)
    expected = reference(nn.conv2d, x, wt, None, stride, 1, dilation, groups)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    gy = rng.standard_normal(got.shape).astype(np.float32)
    assert kernels.kernel("conv2d_weight_grad", "numba")(gy, x, wt.shape, *geometry) is None
    with use_backend("numba"):
        grads = nn.conv2d_backward(gy, x, wt, stride, 1, dilation, groups)
    expected = reference(nn.conv2d_backward, gy, x, wt, stride, 1, dilation, groups)
    for a, b in zip(grads, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_winograd_takes_only_the_convolutions_large_enough_to_gain():
    numba_conv = pytest.importorskip("tinymaskrcnn.kernels.numba_conv")

    def applies(n, c, o, h, w):  # a view with the shape and no memory behind it
        x = np.broadcast_to(np.float32(0), (n, c, h, w))
        return numba_conv.winograd_applies(x, (o, c, 3, 3), (1, 1), (1, 1), 1)

    assert not applies(4, 16, 16, 32, 32)  # the shapes model's layer1 at a batch of 4
    assert not applies(1, 64, 64, 32, 32)  # its FPN on one image
    assert applies(1, 64, 64, 200, 304)  # ResNet-50's layer1 at 800 x 1216
    assert applies(1, 512, 512, 25, 38)  # and its layer4
    assert not applies(0, 512, 512, 25, 38)


def test_a_small_backbone_under_numba_equals_the_reference_forward_and_backward():
    rng = np.random.default_rng(0)
    model = resnet_fpn_backbone("resnet18", width=0.125, out_channels=8, rng=rng)
    x = rng.standard_normal((2, 3, 37, 45)).astype(np.float32)
    grads = None
    results = {}
    for backend in ("numpy", "numba"):
        with use_backend(backend):
            model.zero_grad()
            outs = model(x)
            grads = grads or [rng.standard_normal(p.shape).astype(np.float32) for p in outs]
            model.backward(grads)
            results[backend] = (
                outs,
                {n: p.grad for n, p in model.named_parameters() if p.requires_grad},
            )
    for a, b in zip(results["numba"][0], results["numpy"][0], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for name, g in results["numpy"][1].items():
        np.testing.assert_allclose(results["numba"][1][name], g, rtol=1e-4, atol=1e-4, err_msg=name)


# (N, C, O, k, stride, padding, dilation, groups, H, W): pointwise, strided, grouped+dilated
CUDA_CASES = [
    (1, 3, 4, 1, 1, 0, 1, 1, 5, 4),
    (2, 4, 6, 3, 2, 1, 1, 2, 7, 6),
    (1, 2, 4, 3, 1, 2, 2, 2, 6, 5),
]


@pytest.mark.cuda
@pytest.mark.parametrize("case", CUDA_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_conv2d_equals_the_reference(case, dtype):
    n, c, o, k, s, p, d, g, h, w = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((o, c // g, k, k)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    expected = reference(nn.conv2d, x, wt, b, s, p, d, g)
    with use_backend("cuda"):
        got = nn.conv2d(x, wt, b, s, p, d, g)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("case", CUDA_CASES)
def test_cuda_conv2d_backward_equals_the_reference(case):
    n, c, o, k, s, p, d, g, h, w = case
    rng = np.random.default_rng(sum(case) + 1)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c // g, k, k)).astype(np.float32)
    y = reference(nn.conv2d, x, wt, None, s, p, d, g)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    expected = reference(nn.conv2d_backward, gy, x, wt, s, p, d, g)
    with use_backend("cuda"):
        got = nn.conv2d_backward(gy, x, wt, s, p, d, g)
    for a, e, name in zip(got, expected, ["grad_x", "grad_w", "grad_b"], strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.cuda
def test_cuda_conv2d_keeps_device_arrays_on_the_device():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    wt = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    with use_backend("cuda"):
        d_y = nn.conv2d(cuda.to_device(x), wt, None, 1, 1)
        assert kernels.is_device_array(d_y)
        d_gx, d_gw, d_gb = nn.conv2d_backward(d_y, cuda.to_device(x), wt, 1, 1)
    assert all(kernels.is_device_array(a) for a in (d_gx, d_gw, d_gb))
    np.testing.assert_allclose(
        d_y.copy_to_host(), reference(nn.conv2d, x, wt, None, 1, 1), rtol=1e-5, atol=1e-5
    )


@pytest.mark.cuda
@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 3), s=st.integers(1, 2))
def test_cuda_conv2d_equals_the_reference_on_random_inputs(seed, k, s):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2, 6, 5)).astype(np.float32)
    wt = rng.standard_normal((2, 2, k, k)).astype(np.float32)
    with use_backend("cuda"):
        got = nn.conv2d(x, wt, None, s, k // 2)
    np.testing.assert_allclose(
        got, reference(nn.conv2d, x, wt, None, s, k // 2), rtol=1e-5, atol=1e-5
    )


@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
    residual=st.booleans(),
    relu=st.booleans(),
    scaled=st.booleans(),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_numba_bias_add_relu_equals_the_reference(shape, residual, relu, scaled, dtype, seed):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal(shape).astype(dtype)
    # Signed zeros, NaN and infinities among the values: the kernel keeps the reference's
    # two roundings (y * scale, then + bias) and np.maximum's handling of each.
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, -3.5], dtype)
    spots = rng.random(shape) < 0.2
    y[spots] = rng.choice(special, int(spots.sum()))
    bias = rng.standard_normal(shape[1]).astype(dtype)
    res = rng.standard_normal(shape).astype(dtype) if residual else None
    scale = (rng.standard_normal(shape[1]) * 3).astype(dtype) if scaled else None
    expected = reference(nn.bias_add_relu_, y.copy(), bias, res, relu, scale)
    got = kernels.kernel("bias_add_relu_", "numba")(y.copy(), bias, res, relu, scale)
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()


@pytest.mark.cuda
def test_a_conv_layer_under_cuda_accumulates_the_same_gradients_as_the_reference():
    rng = np.random.default_rng(6)
    layer = nn.Conv2d(2, 3, 3, stride=2, padding=1, rng=rng)
    x = rng.standard_normal((1, 2, 5, 6)).astype(np.float32)
    gy = rng.standard_normal((1, 3, 3, 3)).astype(np.float32)
    grads = {}
    for backend in ("numpy", "cuda"):
        with use_backend(backend):
            layer.zero_grad()
            y = layer(x)
            gx = layer.backward(gy)
        grads[backend] = y, gx, layer.weight.grad, layer.bias.grad
    for a, b in zip(grads["cuda"], grads["numpy"], strict=True):
        assert isinstance(a, np.ndarray)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# --- the heads' products on the device: Linear and the transposed convolution -----------

TRANSPOSED = [  # kernel, stride, padding, output_padding, groups: the mask head's first
    (2, 2, 0, 0, 1),
    (3, 2, 1, 1, 2),
    (1, 1, 0, 0, 1),
]


@pytest.mark.cuda
@pytest.mark.parametrize("kernel, stride, padding, output_padding, groups", TRANSPOSED)
@pytest.mark.parametrize("bias", [True, False])
def test_cuda_conv_transpose2d_on_device_equals_the_reference(
    kernel, stride, padding, output_padding, groups, bias
):
    rng = np.random.default_rng(kernel + stride + groups)
    layer = nn.ConvTranspose2d(
        4, 2, kernel, stride, padding, output_padding, groups, bias, rng=rng
    ).astype(np.float64)
    layer.eval()
    x = rng.standard_normal((2, 4, 3, 4))
    expected = reference(layer, x)
    with use_backend("cuda"):
        got = layer(kernels.to_device(x))
    assert kernels.is_device_array(got)
    np.testing.assert_allclose(kernels.to_host(got), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("rows", [0, 1, 19])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_linear_on_device_equals_the_reference(rows, dtype):
    rng = np.random.default_rng(rows)
    layer = nn.Linear(18, 5, rng=rng).astype(dtype)
    layer.eval()
    x = rng.standard_normal((rows, 18)).astype(dtype)
    expected = reference(layer, x)
    with use_backend("cuda"):
        got = layer(kernels.to_device(x))
    assert kernels.is_device_array(got) and got.shape == expected.shape
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(kernels.to_host(got), expected, rtol=tol, atol=tol)


@pytest.mark.cuda
def test_on_host_inputs_linear_and_the_transposed_convolution_copy_nothing():
    # One product is never worth two copies: a host input runs the reference.
    rng = np.random.default_rng(5)
    linear, transposed = nn.Linear(3, 2, rng=rng), nn.ConvTranspose2d(2, 1, 2, 2, rng=rng)
    with use_backend("cuda"), kernels.count_transfers() as copies:
        y = linear(rng.standard_normal((4, 3)).astype(np.float32))
        z = transposed(rng.standard_normal((1, 2, 3, 3)).astype(np.float32))
    assert isinstance(y, np.ndarray) and isinstance(z, np.ndarray)
    assert copies.total == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_relu_gives_np_maximums_bytes_and_leaves_its_input(dtype):
    x = np.array([[-2.0, -0.0, 0.0, 1e-30, 3.0, np.nan, -np.inf, np.inf]], dtype)
    x = np.concatenate([x, np.random.default_rng(0).standard_normal((3, 8)).astype(dtype)])
    before = x.copy()
    got = kernels.kernel("relu", "numba")(x)
    expected = np.maximum(x, 0)
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
    assert x.tobytes() == before.tobytes()
    # A layer in inference takes it; a non-contiguous input is left to the reference.
    with use_backend("numba"):
        np.testing.assert_array_equal(nn.ReLU().eval()(x[:, ::2]), np.maximum(x[:, ::2], 0))
    assert kernels.kernel("relu", "numba")(x[:, ::2]) is None


@given(
    shape=st.tuples(st.integers(0, 3), st.integers(1, 5), st.integers(1, 9)),
    dtype=st.sampled_from([np.float32, np.float64]),
    grad_dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0, as the reference
def test_numba_training_relu_gives_the_references_bytes(shape, dtype, grad_dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    grad = rng.standard_normal(shape).astype(grad_dtype)
    specials = np.array([-2.0, -0.0, 0.0, 1e-30, np.nan, -np.inf, np.inf], dtype)
    x.reshape(-1)[: specials.size] = specials[: x.size]
    every_third = grad.reshape(-1)[::3]
    every_third[:] = np.resize(
        np.array([np.inf, -np.inf, np.nan, -0.0], grad_dtype), every_third.size
    )
    before = x.copy()
    with pytest.MonkeyPatch.context() as patch:
        # Small arrays, which the kernels leave to the reference unless told otherwise.
        patch.setattr(numba_layers, "RELU_MIN_WORK", 0)
        y, mask = kernels.kernel("relu_with_mask", "numba")(x)
        got = kernels.kernel("relu_backward", "numba")(grad, mask)
    assert mask.dtype == np.bool_ and np.array_equal(mask, x > 0)
    assert y.dtype == (x * (x > 0)).dtype and y.tobytes() == (x * (x > 0)).tobytes()
    assert x.tobytes() == before.tobytes()
    assert got.dtype == (grad * mask).dtype and got.tobytes() == (grad * mask).tobytes()


def test_a_training_relu_layer_takes_the_kernels_and_leaves_odd_inputs_to_the_reference():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 64, 64)).astype(np.float32)  # RELU_MIN_WORK and up
    grad = rng.standard_normal(x.shape).astype(np.float32)
    results = {}
    for backend in ("numpy", "numba"):
        for name, (xs, gs) in {
            "contiguous": (x, grad),
            "strided": (x[..., ::2], grad[..., ::2]),
        }.items():
            layer = nn.ReLU().train()
            with use_backend(backend):
                y = layer(xs)
                gx = layer.backward(gs)
            results[backend, name] = (y.tobytes(), gx.tobytes())
    for name in ("contiguous", "strided"):
        assert results["numba", name] == results["numpy", name]
    with_mask, backward = (kernels.kernel(k, "numba") for k in ("relu_with_mask", "relu_backward"))
    assert with_mask(x[..., ::2]) is None and with_mask(x.astype(np.float16)) is None
    mask = x > 0
    assert backward(grad[..., ::2], mask[..., ::2]) is None
    assert backward(grad, mask.astype(np.float32)) is None
    assert backward(grad[:1], mask) is None
    small = x[:1, :8].copy()  # below RELU_MIN_WORK the reference's passes are faster
    assert with_mask(small) is None and backward(small, small > 0) is None
    assert with_mask(x) is not None and backward(grad, mask) is not None


@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    pool=st.sampled_from(POOLS),
    argmax=st.booleans(),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
    specials=st.booleans(),
)
def test_numba_max_pool2d_equals_the_reference_bytes_and_argmax(
    shape, pool, argmax, dtype, seed, specials
):
    kernel, stride, padding = pool
    n, c, h, w = shape
    if h + 2 * padding[0] < kernel[0] or w + 2 * padding[1] < kernel[1]:
        return  # max_pool2d rejects it before any kernel runs
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    if specials:  # ties (the first in scan order wins), NaN, infinities
        x[..., : w // 2 + 1, :] = np.round(x[..., : w // 2 + 1, :])
        x.reshape(-1)[rng.integers(0, x.size, 3)] = [np.nan, np.inf, -np.inf]
    expected = reference(nn.max_pool2d, x, kernel, stride, padding, argmax=argmax)
    numba_threads = pytest.importorskip("tinymaskrcnn.kernels.numba_threads")
    with use_backend("numba"), pytest.MonkeyPatch.context() as patch:
        # Maps this small run on the calling thread; run them on all, as large ones do.
        patch.setattr(numba_threads, "PARALLEL_MIN_WORK", 0)
        got = nn.max_pool2d(x, kernel, stride, padding, argmax=argmax)
    if argmax:
        assert got[1].dtype == np.int64
        np.testing.assert_array_equal(got[1], expected[1])
        got, expected = got[0], expected[0]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)  # NaN-aware, and -0.0 == 0.0
    if argmax or not specials:
        # The bytes, too. Not for inference with rounded ties: which of -0.0 and 0.0
        # np.maximum returns is up to its SIMD loop, the reference's rule stops at "equal".
        finite = ~np.isnan(expected)
        assert got[finite].tobytes() == expected[finite].tobytes()


def test_numba_max_pool2d_takes_the_layer_in_training_and_inference():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 9, 7)).astype(np.float32)
    grad = rng.standard_normal((2, 4, 5, 4)).astype(np.float32)
    results = {}
    for backend in ("numpy", "numba"):
        with use_backend(backend):
            pool = nn.MaxPool2d(3, 2, 1)
            results[backend] = (pool.eval()(x), pool.train()(x), pool.backward(grad))
    for got, expected in zip(results["numba"], results["numpy"], strict=True):
        np.testing.assert_array_equal(got, expected)
    pool = kernels.kernel("max_pool2d", "numba")
    geometry = ((3, 3), (2, 2), (1, 1), (5, 4))
    assert pool(x, *geometry, False) is not None and pool(x, *geometry, True) is not None
    assert pool(x.astype(np.int32), *geometry, True) is None


@given(
    shape=st.tuples(st.integers(0, 3), st.integers(1, 5), st.integers(1, 6), st.integers(1, 6)),
    out_channels=st.integers(1, 4),
    kernel=st.sampled_from([(2, 2), (1, 1), (3, 2)]),
    bias=st.booleans(),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_numba_transposed_convolution_of_disjoint_blocks_equals_the_reference(
    shape, out_channels, kernel, bias, dtype, seed
):
    # Stride = kernel (the mask head's 2 x 2 / 2): every output is one column of the
    # reference's product, placed once; the same product, so the same values.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((shape[1], out_channels, *kernel)).astype(dtype)
    b = rng.standard_normal(out_channels).astype(dtype) if bias else None
    expected = reference(nn.conv_transpose2d, x, w, b, kernel)
    with use_backend("numba"):
        got = nn.conv_transpose2d(x, w, b, kernel)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


def test_the_numba_transposed_convolution_leaves_overlapping_blocks_to_the_reference():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    kernel = kernels.kernel("conv_transpose2d", "numba")
    for stride, padding, out_hw, groups in (
        ((2, 2), (0, 0), (9, 11), 1),  # windows of 3 every 2: blocks overlap
        ((3, 3), (1, 1), (10, 13), 1),  # padding crops the blocks
        ((3, 3), (0, 0), (13, 16), 1),  # output_padding: a row and column of bias alone
    ):
        assert kernel(x, w, None, stride, padding, out_hw, (1, 1), groups) is None
    assert kernel(x, w, None, (3, 3), (0, 0), (12, 15), (1, 1), 1) is not None
    with use_backend("numba"):  # the layer still gives the reference's numbers
        got = nn.conv_transpose2d(x, w, None, 2, 1, 1)
    np.testing.assert_allclose(got, reference(nn.conv_transpose2d, x, w, None, 2, 1, 1),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
