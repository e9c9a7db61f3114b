"""Every kernel equals the NumPy reference at the edges of its shapes.

Nothing to compute (N = 0 boxes or images, K = 0 RoIs, C = 0 channels), maps one cell
high or wide (and zero, which the RoI ops accept), RoIs whose adaptive RoIAlign grid is
empty (zero width or height with sampling_ratio <= 0 and aligned=True: output 0), forward
and backward. Results must have the reference's shape and dtype and its values, with the
tolerances of the other kernel tests: exact for IoU, NMS, RoIPool and the fused bias +
ReLU; 1e-5 in float32 and 1e-10 in float64 where sums run in another order. CUDA runs
under Numba's simulator: a few small launches per case (its convolutions in float64
only, since each costs seconds there and the code is the same for both dtypes).
"""

import numpy as np
import pytest

from tinymaskrcnn import kernels, nn
from tinymaskrcnn.boxes import BoxCoder, batched_nms, box_decode, box_iou, nms
from tinymaskrcnn.kernels import use_backend
from tinymaskrcnn.roi_ops import roi_align, roi_align_backward, roi_pool, roi_pool_backward

BACKENDS = [pytest.param("numba"), pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [np.float32, np.float64]


def both(backend, fn, *args, **kwargs):
    """(kernel result under ``backend``, reference result)."""
    with use_backend(backend):
        got = fn(*args, **kwargs)
    with use_backend("numpy"):
        return got, fn(*args, **kwargs)


def assert_same(got, expected, exact=False, err_msg=""):
    """Same type, shape and dtype; equal values (exactly, or to the dtype's tolerance)."""
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == len(expected)
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_same(g, e, exact, f"{err_msg} [{i}]")
        return
    if expected is None:
        assert got is None, err_msg
        return
    assert isinstance(got, np.ndarray), f"{err_msg}: got {type(got).__name__}"
    assert got.shape == expected.shape and got.dtype == expected.dtype, (
        f"{err_msg}: {got.shape} {got.dtype} != {expected.shape} {expected.dtype}"
    )
    if exact or expected.dtype.kind in "iub":
        np.testing.assert_array_equal(got, expected, err_msg=err_msg)
    elif expected.dtype == np.float32:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=err_msg)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12, err_msg=err_msg)


# --- boxes -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_box_kernels_on_no_boxes_and_on_one_box_equal_the_reference(backend, dtype):
    none = np.zeros((0, 4), dtype)
    two = np.array([[0, 0, 2, 2], [1, 1, 3, 4]], dtype)
    for a, b in ((none, none), (none, two), (two, none), (two[:1], two)):
        assert_same(*both(backend, box_iou, a, b), exact=True, err_msg=f"iou {len(a)}x{len(b)}")
    for n in (0, 1):
        scores = np.linspace(1, 0.5, n).astype(dtype)
        assert_same(*both(backend, nms, two[:n], scores, 0.5), err_msg=f"nms N={n}")
        classes = np.zeros(n, np.int64)
        assert_same(*both(backend, batched_nms, two[:n], scores, classes, 0.5), err_msg=f"N={n}")
    # Two overlapping boxes of two classes: both kept, by score.
    got, expected = both(
        backend, batched_nms, two, np.array([0.5, 0.9], dtype), np.array([0, 1]), 0.1
    )
    assert_same(got, expected, err_msg="two classes")
    assert expected.tolist() == [1, 0]
    clip = BoxCoder().bbox_xform_clip
    for k in (1, 3):  # deltas for k classes of no boxes: (0, 4k)
        got, expected = both(
            backend, box_decode, np.zeros((0, 4 * k), dtype), none, (10.0,) * 4, clip
        )
        assert_same(got, expected, err_msg=f"decode k={k}")
    deltas = np.array([[0.1, -0.2, 0.3, 0.05]], dtype)
    assert_same(*both(backend, box_decode, deltas, two[:1], (1.0,) * 4, clip), err_msg="decode 1")


# --- RoI ops: nothing to pool ------------------------------------------------------------

# (N, C, K): no RoIs; no images (so no RoIs); no channels.
EMPTY = {"K=0": (2, 3, 0), "N=0": (0, 3, 0), "C=0": (1, 0, 2)}


def _empty_case(case, dtype):
    n, c, k = EMPTY[case]
    features = np.random.default_rng(0).normal(size=(n, c, 5, 6)).astype(dtype)
    rois = np.array([[0, 1.0, 1.5, 9.0, 7.0], [0, -3.0, 2.0, 4.0, 20.0]], dtype)[:k]
    return features, rois, np.ones((k, c, 2, 3), dtype)


@pytest.mark.parametrize(
    "case",
    ["K=0", "N=0", "C=0"],
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_roi_pool_with_nothing_to_pool_equals_the_reference(backend, dtype, case):
    features, rois, grad_out = _empty_case(case, dtype)
    got, expected = both(backend, roi_pool, features, rois, (2, 3), 0.5)
    assert_same(got, expected, exact=True)


@pytest.mark.parametrize("case", ["K=0", "N=0", "C=0"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_roi_align_and_roi_pool_backward_with_nothing_to_pool_equal_the_reference(
    backend, dtype, case
):
    features, rois, grad_out = _empty_case(case, dtype)
    for reduction in ("avg", "max"):
        args = (features, rois, (2, 3), 0.5, 0, True, reduction)
        assert_same(*both(backend, roi_align, *args), err_msg=reduction)
    argmax = np.full(grad_out.shape, -1, np.int64)
    got, expected = both(backend, roi_pool_backward, grad_out, argmax, rois, features.shape)
    assert_same(got, expected, exact=True)
    assert not expected.any()


@pytest.mark.parametrize(
    "case",
    ["K=0", "N=0", "C=0"],
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_roi_align_backward_with_nothing_to_pool_equals_the_reference(backend, dtype, case):
    features, rois, grad_out = _empty_case(case, dtype)
    got, expected = both(backend, roi_align_backward, grad_out, rois, features.shape, 0.5, 0, True)
    assert_same(got, expected)
    assert not expected.any()


# --- RoI ops: maps one cell high or wide ----------------------------------------------------

# Inside, crossing the top-left corner, zero-sized, wholly outside (input pixels, scale 1).
EDGE_ROIS = [[0, 0.3, 0.2, 5.5, 3.0], [0, -1, -1, 2, 2], [0, 2, 0.5, 2, 0.5], [0, 7, 7, 9, 9]]


@pytest.mark.parametrize("hw", [(1, 6), (5, 1), (1, 1), (0, 4), (3, 0)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_roi_kernels_on_a_map_one_cell_high_or_wide_equal_the_reference(backend, dtype, hw):
    rng = np.random.default_rng(sum(hw))
    features = rng.normal(size=(1, 2, *hw)).astype(dtype)
    rois = np.array(EDGE_ROIS, dtype)
    grad_out = rng.normal(size=(len(rois), 2, 2, 2)).astype(dtype)
    for ratio in (0, 2):
        for aligned in (False, True):
            what = f"ratio {ratio} aligned {aligned}"
            args = (features, rois, 2, 1.0, ratio, aligned)
            assert_same(*both(backend, roi_align, *args), err_msg=what)
            bargs = (grad_out, rois, features.shape, 1.0, ratio, aligned)
            assert_same(*both(backend, roi_align_backward, *bargs), err_msg=what)
    assert_same(*both(backend, roi_align, features, rois, 2, 1.0, 0, True, "max"), err_msg="max")
    (out, argmax), expected = both(backend, roi_pool, features, rois, 2)
    assert_same((out, argmax), expected, exact=True)
    got, expected = both(backend, roi_pool_backward, grad_out, argmax, rois, features.shape)
    assert_same(got, expected, exact=False)


# --- RoIAlign: empty adaptive sampling grids -------------------------------------------------


@pytest.mark.parametrize("ratio", [0, -1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_zero_sized_roi_with_an_adaptive_grid_reads_nothing_on_every_backend(
    backend, dtype, ratio
):
    # aligned=True keeps a zero width or height at zero, so ceil(size / bins) = 0 samples:
    # output 0 and no gradient. The legacy mode stretches such RoIs to one cell.
    rng = np.random.default_rng(5)
    features = rng.normal(size=(1, 2, 5, 6)).astype(dtype)
    rois = np.array(
        [[0, 3, 3, 3, 3], [0, 2, 1, 2, 4], [0, 1, 2, 5, 2], [0, 1, 1, 9, 7]], dtype
    )  # a point, zero width, zero height, an ordinary RoI
    grad_out = rng.normal(size=(4, 2, 2, 2)).astype(dtype)
    for aligned in (True, False):
        what = f"aligned {aligned}"
        got, expected = both(backend, roi_align, features, rois, 2, 0.5, ratio, aligned)
        assert_same(got, expected, err_msg=what)
        assert np.all(expected[:3] == 0) == aligned, what
        assert np.all(expected[3] != 0), what
        args = (grad_out, rois, features.shape, 0.5, ratio, aligned)
        assert_same(*both(backend, roi_align_backward, *args), err_msg=what)
    # The max of no samples is 0 too, not -inf.
    got, expected = both(backend, roi_align, features, rois, 2, 0.5, ratio, True, "max")
    assert_same(got, expected, err_msg="max")
    assert np.all(expected[:3] == 0)
    # The zero-sized RoIs alone send no gradient back.
    args = (grad_out[:3], rois[:3], features.shape, 0.5, ratio, True)
    got, expected = both(backend, roi_align_backward, *args)
    assert_same(got, expected)
    assert not expected.any()


# --- convolutions ----------------------------------------------------------------------------

# (x shape, weight shape, stride, padding, groups)
CONV_EDGES = {
    "N=0": ((0, 2, 5, 5), (3, 2, 3, 3), 1, 1, 1),
    "1x1 map, 3x3 kernel": ((1, 2, 1, 1), (3, 2, 3, 3), 1, 1, 1),
    "H=1, stride 2": ((2, 2, 1, 5), (3, 2, 3, 3), 2, 1, 1),
    "W=1, pointwise": ((1, 3, 4, 1), (2, 3, 1, 1), 1, 0, 1),
    "H=1, 1x3 kernel, groups": ((1, 2, 1, 6), (2, 1, 1, 3), 1, 0, 2),
}


def _conv_case(name, dtype):
    x_shape, w_shape, stride, padding, groups = CONV_EDGES[name]
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, w, b, stride, padding, groups


def _check_conv(backend, name, dtype):
    x, w, b, stride, padding, groups = _conv_case(name, dtype)
    got, expected = both(backend, nn.conv2d, x, w, b, stride, padding, 1, groups)
    assert_same(got, expected, err_msg="forward")
    grad_out = np.random.default_rng(1).standard_normal(expected.shape).astype(dtype)
    args = (grad_out, x, w, stride, padding, 1, groups)
    assert_same(*both(backend, nn.conv2d_backward, *args), err_msg="backward")
    if x.shape[0] == 0:
        assert not nn.conv2d_backward(*args)[1].any()  # no images: no weight gradient


@pytest.mark.parametrize("name", list(CONV_EDGES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_convolutions_at_the_edges_equal_the_reference(name, dtype):
    _check_conv("numba", name, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["N=0", "1x1 map, 3x3 kernel", "H=1, stride 2", "W=1, pointwise"])
def test_cuda_convolutions_at_the_edges_equal_the_reference(name):
    _check_conv("cuda", name, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_transposed_convolutions_on_one_cell_and_no_images_equal_the_reference(backend, dtype):
    # No kernel of its own: it runs on the convolution's (im2col, col2im) under numba.
    rng = np.random.default_rng(4)
    w = rng.standard_normal((2, 3, 2, 2)).astype(dtype)
    for x in (rng.standard_normal((1, 2, 1, 1)).astype(dtype), np.zeros((0, 2, 3, 3), dtype)):
        got, expected = both(backend, nn.conv_transpose2d, x, w, None, 2)
        assert_same(got, expected, err_msg=f"forward {x.shape}")
        grad_out = rng.standard_normal(expected.shape).astype(dtype)
        got, expected = both(backend, nn.conv_transpose2d_backward, grad_out, x, w, 2)
        assert_same(got, expected, err_msg=f"backward {x.shape}")


# --- the fused bias + ReLU ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 1, 1), (1, 0, 3, 3), (1, 2, 1, 5)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_bias_add_relu_at_the_edges_equals_the_reference(shape, dtype):
    rng = np.random.default_rng(len(shape))
    y = rng.standard_normal(shape).astype(dtype)
    bias = rng.standard_normal(shape[1]).astype(dtype)
    fused = kernels.kernel("bias_add_relu_", "numba")
    for residual in (None, rng.standard_normal(shape).astype(dtype)):
        expected = nn.bias_add_relu_(y.copy(), bias, residual, True)
        assert_same(fused(y.copy(), bias, residual, True), expected, exact=True)
