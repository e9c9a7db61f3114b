"""Small work on one thread, large on all, and the same results either way.

``numba_threads.threads_for`` runs the numba kernels of convolutions, layers and RoI
ops on the calling thread alone below PARALLEL_MIN_WORK elements, and RoIAlign's
forward reads a channels-last copy of the map when its RoIs sample each cell often.
The kernel tests elsewhere run at sizes that take one of those paths; here every kernel
is forced down each path in turn and must equal the reference, and RoIAlign's two
layouts must agree bit for bit.
"""

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import roi_problems

from tinymaskrcnn import kernels, nn
from tinymaskrcnn.kernels import numba_roi_ops, numba_threads, use_backend
from tinymaskrcnn.nn import conv as conv_mod
from tinymaskrcnn.roi_ops import roi_align, roi_align_backward, roi_pool, roi_pool_backward
from tinymaskrcnn.roi_ops.align import roi_align_geometry


def reference(fn, *args, **kwargs):
    with use_backend("numpy"):
        return fn(*args, **kwargs)


def numba_run(fn, *args, **kwargs):
    with use_backend("numba"):
        return fn(*args, **kwargs)


def test_small_work_runs_on_one_thread_and_the_count_comes_back():
    threads = numba.get_num_threads()
    with numba_threads.threads_for(10):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == threads
    with numba_threads.threads_for(numba_threads.PARALLEL_MIN_WORK):
        assert numba.get_num_threads() == threads
    with pytest.raises(RuntimeError), numba_threads.threads_for(10):
        raise RuntimeError("a kernel failed")
    assert numba.get_num_threads() == threads


def test_a_thread_already_serial_stays_serial_without_switching(monkeypatch):
    threads = numba.get_num_threads()
    calls = []
    monkeypatch.setattr(numba_threads.numba, "set_num_threads", calls.append)
    monkeypatch.setattr(numba_threads.numba, "get_num_threads", lambda: 1)
    with numba_threads.threads_for(10):
        pass
    assert calls == []  # one thread already: nothing to switch, nothing to restore
    monkeypatch.setattr(numba_threads.numba, "get_num_threads", lambda: 2)
    with numba_threads.threads_for(10):
        pass
    assert calls == [1, 2]
    monkeypatch.undo()
    assert numba.get_num_threads() == threads


@pytest.fixture(params=["one thread", "all threads"])
def threads_path(request, monkeypatch):
    """Force every numba kernel onto one thread, or onto all, whatever its size."""
    limit = 1 << 62 if request.param == "one thread" else 0
    monkeypatch.setattr(numba_threads, "PARALLEL_MIN_WORK", limit)
    return request.param


def _roi_problem(dtype, n_rois=40, channels=6, size=12):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(2, channels, size, size)).astype(dtype)
    corners = rng.uniform(-4, 4 * size + 4, size=(n_rois, 4))
    boxes = np.concatenate(
        [np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])],
        axis=1,
    )
    rois = np.concatenate([rng.integers(0, 2, (n_rois, 1)), boxes], axis=1).astype(dtype)
    return features, rois


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_numba_kernel_equals_the_reference_on_either_thread_path(threads_path, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 11, 9)).astype(dtype)
    geometry = ((3, 3), (2, 1), (1, 2), (1, 4))
    np.testing.assert_array_equal(
        kernels.kernel("im2col", "numba")(x, *geometry), reference(conv_mod.im2col, x, *geometry)
    )
    cols = reference(conv_mod.im2col, x, *geometry)
    np.testing.assert_allclose(
        kernels.kernel("col2im", "numba")(cols, np.zeros_like(x), *geometry),
        reference(conv_mod.col2im, cols, np.zeros_like(x), *geometry),
        rtol=1e-6,
    )
    bias, residual = (
        rng.standard_normal(5).astype(dtype),
        rng.standard_normal(x.shape).astype(dtype),
    )
    np.testing.assert_allclose(
        kernels.kernel("bias_add_relu_", "numba")(x.copy(), bias, residual, True),
        reference(nn.bias_add_relu_, x.copy(), bias, residual, True),
        rtol=1e-6,
    )

    np.testing.assert_array_equal(kernels.kernel("relu", "numba")(x), np.maximum(x, 0))

    features, rois = _roi_problem(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}
    for reduction in ("avg", "max"):
        np.testing.assert_allclose(
            numba_run(roi_align, features, rois, (3, 4), 0.25, -1, True, reduction),
            reference(roi_align, features, rois, (3, 4), 0.25, -1, True, reduction),
            **tol,
        )
    grad_out = rng.standard_normal((len(rois), 6, 3, 4)).astype(dtype)
    np.testing.assert_allclose(
        numba_run(roi_align_backward, grad_out, rois, features.shape, 0.25, 2),
        reference(roi_align_backward, grad_out, rois, features.shape, 0.25, 2),
        **tol,
    )
    pooled, argmax = numba_run(roi_pool, features, rois, (3, 4), 0.25)
    expected, expected_argmax = reference(roi_pool, features, rois, (3, 4), 0.25)
    np.testing.assert_array_equal(pooled, expected)
    np.testing.assert_array_equal(argmax, expected_argmax)
    np.testing.assert_allclose(
        numba_run(roi_pool_backward, grad_out, argmax, rois, features.shape),
        reference(roi_pool_backward, grad_out, expected_argmax, rois, features.shape),
        **tol,
    )


def _both_layouts(features, rois, size, scale, ratio, aligned, reduction):
    geometry = roi_align_geometry(rois, size, scale, ratio, aligned)
    out = []
    for samples_per_cell in (0, 1 << 62):  # always channels-last, never
        layout = pytest.MonkeyPatch()
        layout.setattr(numba_roi_ops, "_CHANNELS_LAST_MIN_SAMPLES_PER_CELL", samples_per_cell)
        try:
            out.append(numba_roi_ops.roi_align(features, geometry, size, reduction))
        finally:
            layout.undo()
    return out


@given(
    problem=roi_problems(),
    ratio=st.sampled_from([-1, 0, 1, 2]),
    aligned=st.booleans(),
    reduction=st.sampled_from(["avg", "max"]),
)
def test_roi_align_reads_channels_last_with_the_same_bits(problem, ratio, aligned, reduction):
    features, rois, size, scale = problem
    channels_last, planes = _both_layouts(features, rois, size, scale, ratio, aligned, reduction)
    np.testing.assert_array_equal(channels_last, planes)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["avg", "max"])
def test_roi_align_reads_channels_last_with_the_same_bits_on_many_channels(dtype, reduction):
    # 67 channels: the compiler's vector loop over channels and its scalar tail both run.
    features, rois = _roi_problem(dtype, n_rois=30, channels=67, size=10)
    for ratio, aligned in ((2, False), (-1, True)):
        channels_last, planes = _both_layouts(
            features, rois, (5, 4), 0.25, ratio, aligned, reduction
        )
        np.testing.assert_array_equal(channels_last, planes)


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 17, 9, 11), (1, 40, 30, 50)])
def test_the_tiled_channels_last_copy_equals_numpys_transpose(shape, monkeypatch):
    # Tile edges: channels not a multiple of 16, cells not of 64; small maps through NumPy.
    features = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = features.transpose(0, 2, 3, 1).reshape(shape[0], -1)
    for limit in (0, 1 << 62):  # the tiled kernel, NumPy's copy
        monkeypatch.setattr(numba_threads, "PARALLEL_MIN_WORK", limit)
        np.testing.assert_array_equal(numba_roi_ops._channels_last(features), expected)


def test_roi_align_takes_channels_last_where_the_rois_read_each_cell_often(monkeypatch):
    taken = []
    for name in ("_roi_align_forward", "_roi_align_forward_channels_last"):
        kernel = getattr(numba_roi_ops, name)
        monkeypatch.setattr(
            numba_roi_ops,
            name,
            lambda *a, kernel=kernel, name=name: (taken.append(name), kernel(*a)),
        )
    features, rois = _roi_problem(np.float32, n_rois=100, channels=4, size=32)
    numba_run(roi_align, features, rois, (7, 7), 0.25, 2)  # 100 x 196 samples, 2048 cells
    numba_run(roi_align, features, rois[:2], (2, 2), 0.25, 1)  # 8 samples
    assert taken == ["_roi_align_forward_channels_last", "_roi_align_forward"]
