"""Convolution and transposed convolution: hand cases, torch parity, gradients, chunking."""

import pathlib

import numpy as np
import pytest
from gradcheck import check_module_gradients
from hypothesis import given
from hypothesis import strategies as st

from tinymaskrcnn import nn
from tinymaskrcnn.nn import conv as conv_mod

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
# torch computed the fixture in float64, as we do: equal to rounding (sums in another
# order), rtol and atol both stated (assert_allclose alone would allow rtol 1e-7).
F64 = {"rtol": 1e-10, "atol": 1e-12}


def naive_conv2d(x, w, b, stride, padding, dilation, groups):
    """The definition, one output value at a time (tiny shapes only)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    y = np.zeros((n, o, ho, wo))
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                rows = slice(i * stride, i * stride + dilation * (kh - 1) + 1, dilation)
                cols = slice(j * stride, j * stride + dilation * (kw - 1) + 1, dilation)
                patch = xp[:, g * cg : (g + 1) * cg, rows, cols]
                y[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3)) + (0 if b is None else b[oc])
    return y


def test_a_3x3_ones_kernel_sums_each_neighbourhood_of_a_5x5_arange():
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    y = nn.conv2d(x, np.ones((1, 1, 3, 3)), padding=1)
    assert y[0, 0, 0, 0] == 0 + 1 + 5 + 6
    assert y[0, 0, 2, 2] == 9 * 12
    assert y[0, 0, 4, 4] == 18 + 19 + 23 + 24


def test_stride_two_keeps_every_other_output_of_stride_one():
    x = np.random.default_rng(0).standard_normal((1, 2, 9, 8))
    w = np.random.default_rng(1).standard_normal((3, 2, 3, 3))
    np.testing.assert_allclose(
        nn.conv2d(x, w, stride=2, padding=1), nn.conv2d(x, w, padding=1)[:, :, ::2, ::2]
    )


@pytest.mark.parametrize("case", range(5))
def test_conv2d_forward_and_backward_match_torch(case):
    f = np.load(FIXTURES / "nn_ops.npz")
    c, o, k, s, p, d, g, h, w = f[f"conv{case}_args"]
    x, wt, b = f[f"conv{case}_x"], f[f"conv{case}_w"], f[f"conv{case}_b"]
    np.testing.assert_allclose(nn.conv2d(x, wt, b, s, p, d, g), f[f"conv{case}_y"], **F64)
    gx, gw, gb = nn.conv2d_backward(f[f"conv{case}_gy"], x, wt, s, p, d, g)
    np.testing.assert_allclose(gx, f[f"conv{case}_gx"], **F64)
    np.testing.assert_allclose(gw, f[f"conv{case}_gw"], **F64)
    np.testing.assert_allclose(gb, f[f"conv{case}_gb"], **F64)


def test_transposed_conv_forward_and_backward_match_torch():
    f = np.load(FIXTURES / "nn_ops.npz")
    y = nn.conv_transpose2d(f["convT_x"], f["convT_w"], f["convT_b"], stride=2)
    np.testing.assert_allclose(y, f["convT_y"], **F64)
    gx, gw, gb = nn.conv_transpose2d_backward(f["convT_gy"], f["convT_x"], f["convT_w"], 2)
    np.testing.assert_allclose(gx, f["convT_gx"], **F64)
    np.testing.assert_allclose(gw, f["convT_gw"], **F64)
    np.testing.assert_allclose(gb, f["convT_gb"], **F64)


@given(
    n=st.integers(1, 2), cg=st.integers(1, 3), og=st.integers(1, 3), groups=st.integers(1, 2),
    k=st.integers(1, 3), stride=st.integers(1, 3), padding=st.integers(0, 2),
    dilation=st.integers(1, 2), h=st.integers(3, 8), w=st.integers(3, 8),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_conv2d_equals_the_definition_for_any_geometry(
    n, cg, og, groups, k, stride, padding, dilation, h, w, seed
):
    if h + 2 * padding < dilation * (k - 1) + 1 or w + 2 * padding < dilation * (k - 1) + 1:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cg * groups, h, w))
    wt = rng.standard_normal((og * groups, cg, k, k))
    b = rng.standard_normal(og * groups)
    np.testing.assert_allclose(
        nn.conv2d(x, wt, b, stride, padding, dilation, groups),
        naive_conv2d(x, wt, b, stride, padding, dilation, groups),
        atol=1e-12,
    )


def test_chunked_rows_give_the_same_result_as_one_chunk(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 13, 11))
    w = rng.standard_normal((6, 2, 3, 3))
    gy = rng.standard_normal((2, 6, 7, 6))
    whole = nn.conv2d(x, w, None, 2, 1, 1, 2), nn.conv2d_backward(gy, x, w, 2, 1, 1, 2)
    # 4 channels * 9 taps * 6 columns * 8 bytes = 1728 bytes per output row: 2-row bands.
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 3500)
    banded = nn.conv2d(x, w, None, 2, 1, 1, 2), nn.conv2d_backward(gy, x, w, 2, 1, 1, 2)
    np.testing.assert_allclose(banded[0], whole[0], atol=1e-12)
    for a, b in zip(banded[1], whole[1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)


@pytest.mark.parametrize(
    "stride,padding,dilation,groups",
    [(1, 0, 1, 1), (1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 0, 1, 2), (3, 1, 2, 2)],
)
def test_conv2d_layer_gradients_match_central_differences(stride, padding, dilation, groups):
    rng = np.random.default_rng(stride * 100 + padding * 10 + dilation + groups)
    layer = nn.Conv2d(4, 6, 3, stride, padding, dilation, groups, rng=rng).astype(np.float64)
    check_module_gradients(layer, rng.standard_normal((2, 4, 8, 7)), rng)


def test_pointwise_conv_layer_gradients_match_central_differences():
    rng = np.random.default_rng(5)
    layer = nn.Conv2d(6, 4, 1, groups=2, bias=False, rng=rng).astype(np.float64)
    check_module_gradients(layer, rng.standard_normal((2, 6, 5, 4)), rng)


@pytest.mark.parametrize("stride,padding", [(2, 0), (2, 1), (1, 1), (3, 0)])
def test_transposed_conv_layer_gradients_match_central_differences(stride, padding):
    rng = np.random.default_rng(stride + 7 * padding)
    layer = nn.ConvTranspose2d(3, 4, 3 if padding else 2, stride, padding, rng=rng)
    check_module_gradients(layer.astype(np.float64), rng.standard_normal((2, 3, 4, 5)), rng)


@pytest.mark.parametrize(
    "stride,padding,output_padding,dilation,groups",
    [(2, 1, 1, 1, 1), (1, 2, 0, 2, 1), (2, 0, 0, 1, 2), (3, 1, 2, 2, 2)],
)
def test_transposed_conv_output_padding_dilation_groups_gradients_match_central_differences(
    stride, padding, output_padding, dilation, groups
):
    # conv_transpose2d_backward's other arguments: the mask head uses none of them.
    rng = np.random.default_rng(stride + 5 * dilation + 11 * groups)
    layer = nn.ConvTranspose2d(
        4, 6, 3, stride, padding, output_padding, groups, dilation=dilation, rng=rng
    ).astype(np.float64)
    layer.bias.data = rng.standard_normal(6)
    assert check_module_gradients(layer, rng.standard_normal((2, 4, 3, 4)), rng) == 2


def test_a_frozen_conv_passes_gradients_but_keeps_no_weight_gradient():
    rng = np.random.default_rng(0)
    layer = nn.Conv2d(2, 3, 3, padding=1, rng=rng).astype(np.float64).requires_grad_(False)
    layer(rng.standard_normal((1, 2, 4, 4)))
    gx = layer.backward(np.ones((1, 3, 4, 4)))
    assert gx.shape == (1, 2, 4, 4) and layer.weight.grad is None and layer.bias.grad is None


def test_an_empty_batch_gives_an_empty_output_of_the_right_shape():
    y = nn.conv2d(np.zeros((0, 3, 9, 9), np.float32), np.zeros((5, 3, 3, 3), np.float32), None, 2)
    assert y.shape == (0, 5, 4, 4) and y.dtype == np.float32


def test_float32_input_gives_float32_output():
    x = np.ones((1, 3, 6, 6), np.float32)
    assert nn.conv2d(x, np.ones((2, 3, 3, 3)), np.zeros(2), padding=1).dtype == np.float32


@pytest.mark.parametrize(
    "x_shape,message",
    [((1, 4, 8, 8), "C = 3"), ((3, 8, 8), r"\(N, C, H, W\)"), ((1, 3, 1, 1), "smaller than")],
)
def test_wrong_inputs_raise_a_clear_error(x_shape, message):
    with pytest.raises(ValueError, match=message):
        nn.conv2d(np.zeros(x_shape), np.zeros((2, 3, 3, 3)))


def test_the_layer_names_the_channel_count_it_expects():
    layer = nn.Conv2d(3, 8, 3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\); got shape \(1, 4, 9, 9\)"):
        layer(np.zeros((1, 4, 9, 9), np.float32))


def test_a_bias_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError, match="bias must be"):
        nn.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((2, 3, 3, 3)), np.zeros(3))
