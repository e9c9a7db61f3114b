"""The numba and CUDA kernels of roi_ops/ equal the NumPy reference.

Random feature maps and RoIs of every kind (inside, across the border, wholly outside,
zero-sized, larger than the map), both dtypes, every sampling mode; CUDA runs under
Numba's simulator unless pytest is run with ``-m gpu``, so its cases stay small.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import roi_problems

from tinymaskrcnn import kernels
from tinymaskrcnn.kernels import use_backend
from tinymaskrcnn.roi_ops import roi_align, roi_align_backward, roi_pool, roi_pool_backward


def _tolerance(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}


def _run(backend, function, *args, **kwargs):
    with use_backend(backend):
        return function(*args, **kwargs)


CPU = [pytest.param("numba", id="numba")]
ALL = [*CPU, pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


def _examples(backend):
    # The CUDA simulator runs a Python thread per output element: fewer, smaller cases.
    # On the CPU up to 6 channels take the numba forward's 4-channel path and its rest.
    return roi_problems(max_k=4, max_c=2, max_size=6) if backend == "cuda" else roi_problems()


@pytest.mark.parametrize("backend", ALL)
def test_roi_align_kernels_equal_the_reference(backend):
    @given(
        problem=_examples(backend),
        ratio=st.sampled_from([-1, 0, 1, 2]),
        aligned=st.booleans(),
        reduction=st.sampled_from(["avg", "max"]),
    )
    def check(problem, ratio, aligned, reduction):
        features, rois, size, scale = problem
        expected = roi_align(features, rois, size, scale, ratio, aligned, reduction)
        got = _run(backend, roi_align, features, rois, size, scale, ratio, aligned, reduction)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, **_tolerance(features.dtype))

    check()


@pytest.mark.parametrize("backend", ALL)
def test_roi_align_backward_kernels_equal_the_reference(backend):
    @given(problem=_examples(backend), ratio=st.sampled_from([-1, 1, 2]), aligned=st.booleans())
    def check(problem, ratio, aligned):
        features, rois, size, scale = problem
        grad_out = (
            np.random.default_rng(len(rois))
            .normal(size=(len(rois), features.shape[1], *size))
            .astype(features.dtype)
        )
        expected = roi_align_backward(grad_out, rois, features.shape, scale, ratio, aligned)
        got = _run(
            backend, roi_align_backward, grad_out, rois, features.shape, scale, ratio, aligned
        )
        assert got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, **_tolerance(features.dtype))

    check()


@pytest.mark.parametrize("backend", ALL)
def test_roi_pool_kernels_equal_the_reference_argmax_included(backend):
    @given(problem=_examples(backend))
    def check(problem):
        features, rois, size, scale = problem
        expected, expected_argmax = roi_pool(features, rois, size, scale)
        got, argmax = _run(backend, roi_pool, features, rois, size, scale)
        np.testing.assert_array_equal(argmax, expected_argmax)
        np.testing.assert_array_equal(got, expected)

    check()


@pytest.mark.parametrize("backend", ALL)
def test_roi_pool_backward_kernels_equal_the_reference(backend):
    @given(problem=_examples(backend))
    def check(problem):
        features, rois, size, scale = problem
        _, argmax = roi_pool(features, rois, size, scale)
        grad_out = np.random.default_rng(1).normal(size=argmax.shape).astype(features.dtype)
        expected = roi_pool_backward(grad_out, argmax, rois, features.shape)
        got = _run(backend, roi_pool_backward, grad_out, argmax, rois, features.shape)
        np.testing.assert_allclose(got, expected, **_tolerance(features.dtype))

    check()


def test_numba_kernels_split_channels_when_there_are_few_rois():
    # One RoI and many channels: the forward runs several channel blocks per RoI.
    rng = np.random.default_rng(2)
    features = rng.normal(size=(1, 37, 10, 11))
    rois = np.array([[0, 1.5, 2.0, 17.0, 15.5]])
    expected = roi_align(features, rois, (3, 3), 0.5, -1)
    np.testing.assert_allclose(
        _run("numba", roi_align, features, rois, (3, 3), 0.5, -1), expected, rtol=1e-12
    )
    grad_out = rng.normal(size=expected.shape)
    np.testing.assert_allclose(
        _run("numba", roi_align_backward, grad_out, rois, features.shape, 0.5, -1),
        roi_align_backward(grad_out, rois, features.shape, 0.5, -1),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.cuda
def test_cuda_results_stay_on_the_device_when_given_device_arrays():
    from numba import cuda

    rng = np.random.default_rng(3)
    features = rng.normal(size=(1, 2, 5, 6)).astype(np.float32)
    rois = np.array([[0, 0.5, 1.0, 9.0, 7.5], [0, 3.0, 2.0, 5.0, 4.0]], np.float32)
    with use_backend("cuda"):
        out = roi_align(cuda.to_device(features), cuda.to_device(rois), 2, 0.5, 2)
        pooled, argmax = roi_pool(cuda.to_device(features), rois, 2, 0.5)
        grad = roi_align_backward(out, cuda.to_device(rois), features.shape, 0.5, 2)
        pool_grad = roi_pool_backward(pooled, argmax, rois, features.shape)
    assert all(kernels.is_device_array(a) for a in (out, pooled, argmax, grad, pool_grad))
    np.testing.assert_allclose(out.copy_to_host(), roi_align(features, rois, 2, 0.5, 2), rtol=1e-6)
    np.testing.assert_allclose(
        grad.copy_to_host(),
        roi_align_backward(out.copy_to_host(), rois, features.shape, 0.5, 2),
        rtol=1e-5,
        atol=1e-6,
    )
    ref_pooled, ref_argmax = roi_pool(features, rois, 2, 0.5)
    np.testing.assert_array_equal(argmax.copy_to_host(), ref_argmax)
    np.testing.assert_allclose(
        pool_grad.copy_to_host(), roi_pool_backward(ref_pooled, ref_argmax, rois, features.shape)
    )


@pytest.mark.cuda
def test_a_device_array_outside_the_cuda_backend_is_refused_with_the_fix():
    from numba import cuda

    features = cuda.to_device(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"GPU array; run under use_backend\('cuda'\)"):
        roi_align(features, np.array([[0, 0, 0, 2, 2]], np.float32), 2)


def _training_sized_problem(dtype, n_rois=300):
    # The shapes preset's RoIs on a P2 map: small bins (neighbouring samples share
    # cells, which the backward merges), RoIs in four images, some past the border.
    rng = np.random.default_rng(7)
    features = rng.normal(size=(4, 12, 32, 32)).astype(dtype)
    centre = rng.uniform(-8, 136, (n_rois, 2))
    side = rng.uniform(2, 128, (n_rois, 2))
    boxes = np.concatenate([centre - side / 2, centre + side / 2], axis=1)
    rois = np.concatenate([rng.integers(0, 4, (n_rois, 1)), boxes], axis=1).astype(dtype)
    grad_out = rng.normal(size=(n_rois, 12, 7, 7)).astype(dtype)
    return grad_out, rois, features.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk", [None, 1, 5000])
def test_numba_roi_align_backward_equals_the_reference_in_chunks(dtype, chunk, monkeypatch):
    # The cell tables are built a chunk of RoIs at a time: one RoI a chunk, a few, all.
    from tinymaskrcnn.kernels import numba_roi_ops

    if chunk is not None:
        monkeypatch.setattr(numba_roi_ops, "_BACKWARD_CHUNK_ENTRIES", chunk)
    grad_out, rois, shape = _training_sized_problem(dtype)
    for ratio, aligned in ((2, False), (-1, True)):
        np.testing.assert_allclose(
            _run("numba", roi_align_backward, grad_out, rois, shape, 0.25, ratio, aligned),
            roi_align_backward(grad_out, rois, shape, 0.25, ratio, aligned),
            **_tolerance(dtype),
        )


def test_numba_roi_align_backward_is_bit_identical_for_any_thread_count():
    # Each channel plane gets its additions in one fixed order, whichever thread owns it.
    import numba

    grad_out, rois, shape = _training_sized_problem(np.float32)
    saved = numba.get_num_threads()
    results = []
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS, 1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            results.append(_run("numba", roi_align_backward, grad_out, rois, shape, 0.25, 2))
    finally:
        numba.set_num_threads(saved)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.cuda
def test_the_pyramid_keeps_roi_align_results_on_the_device_and_in_roi_order():
    # Device features (the cuda backend's inference): each level's RoIAlign result is
    # placed in RoI order by a kernel, and the whole (K, C, 2, 2) stays on the device.
    from tinymaskrcnn.roi_ops import MultiScaleRoIAlign

    rng = np.random.default_rng(4)
    features = [rng.standard_normal((1, 3, s, s)) for s in (32, 16, 8, 4)]
    side = np.array([10.0, 240.0, 30.0, 480.0, 120.0, 200.0])  # four levels, mixed
    x1 = rng.uniform(0, 8, len(side))
    boxes = [np.stack([x1, x1, x1 + side, x1 + side], axis=1)]
    pool = MultiScaleRoIAlign(2, sampling_ratio=2).eval()
    expected = pool(features, boxes, [(128, 128)])
    assert len(set(pool.levels(boxes[0]))) == 4
    with use_backend("cuda"):
        got = pool([kernels.to_device(f) for f in features], boxes, [(128, 128)])
    assert kernels.is_device_array(got)
    np.testing.assert_allclose(kernels.to_host(got), expected, rtol=1e-12, atol=1e-12)
