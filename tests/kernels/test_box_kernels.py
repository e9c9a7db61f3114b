"""The box kernels (numba_boxes.py, cuda_boxes.py) equal the NumPy reference.

Every kernel is compared with the reference on hypothesis boxes (empty, degenerate and
duplicated ones included) in float32 and float64, and with torchvision's fixtures.
CUDA runs under Numba's simulator (tests/conftest.py): its cases stay small, since the
simulator runs one Python thread per CUDA thread.
"""

import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import cuda
from real_compiler import run_outside_the_simulator
from strategies import boxes, random_boxes, scored_boxes

from tinymaskrcnn import kernels
from tinymaskrcnn.boxes import BoxCoder, batched_nms, box_decode, box_iou, nms
from tinymaskrcnn.kernels import numba_boxes, use_backend

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "boxes.npz"
DTYPES = st.sampled_from([np.float32, np.float64])
WEIGHTS = st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
BACKENDS = [
    pytest.param("numba"),
    pytest.param("cuda", marks=pytest.mark.cuda),
]
CUDA_EXAMPLES = settings(max_examples=12)


def reference(fn, *args):
    with use_backend("numpy"):
        return fn(*args)


def on(backend, fn, *args):
    with use_backend(backend):
        return fn(*args)


def assert_decoded_close(got, expected):
    # Boxes are differences of large centres and half-sizes: compare against their scale.
    scale = np.abs(expected).max() if expected.size else 1.0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * scale)


# --- registry ----------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["box_iou", "nms", "batched_nms", "box_decode"])
@pytest.mark.parametrize("backend", ["numba", "cuda"])
def test_every_box_op_has_a_kernel_on_every_fast_backend(op, backend):
    assert callable(kernels.kernel(op, backend))


# --- numba -------------------------------------------------------------------------------


@given(dtype=DTYPES, data=st.data())
def test_numba_iou_equals_the_reference_exactly(dtype, data):
    a = data.draw(boxes(max_n=40, dtype=dtype))
    b = data.draw(boxes(max_n=40, dtype=dtype))
    got = on("numba", box_iou, a, b)
    assert got.dtype == dtype and got.shape == (len(a), len(b))
    np.testing.assert_array_equal(got, reference(box_iou, a, b))


@given(dtype=DTYPES, data=st.data(), threshold=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_numba_nms_equals_the_reference(dtype, data, threshold):
    b, s, _ = data.draw(scored_boxes(max_n=60, dtype=dtype))
    np.testing.assert_array_equal(
        on("numba", nms, b, s, threshold), reference(nms, b, s, threshold)
    )


@given(dtype=DTYPES, data=st.data(), threshold=st.sampled_from([0.3, 0.5]))
def test_numba_batched_nms_equals_the_reference(dtype, data, threshold):
    b, s, idxs = data.draw(scored_boxes(max_n=60, dtype=dtype, num_classes=4))
    np.testing.assert_array_equal(
        on("numba", batched_nms, b, s, idxs, threshold),
        reference(batched_nms, b, s, idxs, threshold),
    )


@pytest.fixture(params=["serial", "parallel"])
def numba_path(request, monkeypatch):
    """Force the serial or the parallel compilation of every numba box kernel."""
    limit = 0 if request.param == "parallel" else 1 << 62
    for name in ("_PARALLEL_MIN_PAIRS", "_PARALLEL_MIN_BOXES"):
        monkeypatch.setattr(numba_boxes, name, limit)
    return request.param


def test_numba_nms_equals_the_reference_across_many_tiles():
    # 1000 boxes with ties: 16 tiles of the kernel's spatial layout, 4 groups.
    rng = np.random.default_rng(0)
    b = random_boxes(rng, 1000, image_size=(300, 300), min_size=10, max_size=80)
    s = (rng.integers(0, 50, 1000) / 50).astype(np.float32)
    idxs = rng.integers(0, 3, 1000)
    for t in (0.3, 0.7):
        np.testing.assert_array_equal(on("numba", nms, b, s, t), reference(nms, b, s, t))
        np.testing.assert_array_equal(
            on("numba", batched_nms, b, s, idxs, t), reference(batched_nms, b, s, idxs, t)
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_iou_and_decode_equal_the_reference_on_both_paths(numba_path, dtype):
    rng = np.random.default_rng(1)
    a = random_boxes(rng, 300, dtype=dtype)
    a[::7, 2] = a[::7, 0]  # degenerate boxes
    b = random_boxes(rng, 200, dtype=dtype)
    np.testing.assert_array_equal(on("numba", box_iou, a, b), reference(box_iou, a, b))
    deltas = rng.normal(0, 3, (300, 8)).astype(dtype)
    args = (deltas, a, (10.0, 10.0, 5.0, 5.0), BoxCoder().bbox_xform_clip)
    assert_decoded_close(on("numba", box_decode, *args), reference(box_decode, *args))


@given(dtype=DTYPES, data=st.data(), weights=WEIGHTS, k=st.integers(1, 3))
def test_numba_decode_equals_the_reference(dtype, data, weights, k):
    anchors = data.draw(boxes(max_n=40, dtype=dtype))
    rng = np.random.default_rng(len(anchors))
    deltas = rng.normal(0, 3, (len(anchors), 4 * k)).astype(dtype)  # |dw| > 4.1 hits the clip
    args = (deltas, anchors, weights, BoxCoder().bbox_xform_clip)
    got = on("numba", box_decode, *args)
    assert got.dtype == dtype and got.shape == deltas.shape
    assert_decoded_close(got, reference(box_decode, *args))


# --- cuda (simulator) --------------------------------------------------------------------


@pytest.mark.cuda
@CUDA_EXAMPLES
@given(dtype=DTYPES, data=st.data())
def test_cuda_iou_equals_the_reference(dtype, data):
    a = data.draw(boxes(max_n=20, dtype=dtype))
    b = data.draw(boxes(max_n=20, dtype=dtype))
    got = on("cuda", box_iou, a, b)
    assert got.dtype == dtype and got.shape == (len(a), len(b))
    np.testing.assert_allclose(got, reference(box_iou, a, b), rtol=1e-6, atol=0)


@pytest.mark.cuda
@CUDA_EXAMPLES
@given(dtype=DTYPES, data=st.data(), threshold=st.sampled_from([0.0, 0.5, 0.7]))
def test_cuda_nms_equals_the_reference(dtype, data, threshold):
    b, s, _ = data.draw(scored_boxes(max_n=30, dtype=dtype))
    np.testing.assert_array_equal(on("cuda", nms, b, s, threshold), reference(nms, b, s, threshold))


@pytest.mark.cuda
@CUDA_EXAMPLES
@given(dtype=DTYPES, data=st.data())
def test_cuda_batched_nms_equals_the_reference(dtype, data):
    b, s, idxs = data.draw(scored_boxes(max_n=30, dtype=dtype, num_classes=3))
    np.testing.assert_array_equal(
        on("cuda", batched_nms, b, s, idxs, 0.5), reference(batched_nms, b, s, idxs, 0.5)
    )


@pytest.mark.cuda
def test_cuda_nms_equals_the_reference_across_several_64_box_tiles():
    rng = np.random.default_rng(1)
    b = random_boxes(rng, 150, image_size=(200, 200), min_size=10, max_size=80)
    s = (rng.integers(0, 10, 150) / 10).astype(np.float32)  # ties across tiles
    idxs = rng.integers(0, 2, 150)
    np.testing.assert_array_equal(on("cuda", nms, b, s, 0.5), reference(nms, b, s, 0.5))
    np.testing.assert_array_equal(
        on("cuda", batched_nms, b, s, idxs, 0.5), reference(batched_nms, b, s, idxs, 0.5)
    )


@pytest.mark.cuda
@CUDA_EXAMPLES
@given(dtype=DTYPES, data=st.data(), weights=WEIGHTS, k=st.integers(1, 2))
def test_cuda_decode_equals_the_reference(dtype, data, weights, k):
    anchors = data.draw(boxes(max_n=20, dtype=dtype))
    rng = np.random.default_rng(len(anchors))
    deltas = rng.normal(0, 3, (len(anchors), 4 * k)).astype(dtype)
    args = (deltas, anchors, weights, BoxCoder().bbox_xform_clip)
    got = on("cuda", box_decode, *args)
    assert got.dtype == dtype and got.shape == deltas.shape
    assert_decoded_close(got, reference(box_decode, *args))


@pytest.mark.cuda
def test_cuda_ops_keep_device_arrays_on_the_device():
    rng = np.random.default_rng(2)
    b = random_boxes(rng, 40, image_size=(100, 100), min_size=5, max_size=40)
    s = rng.random(40).astype(np.float32)
    deltas = rng.normal(0, 1, (40, 4)).astype(np.float32)
    d_b, d_s, d_deltas = cuda.to_device(b), cuda.to_device(s), cuda.to_device(deltas)
    with use_backend("cuda"):
        d_iou = box_iou(d_b, d_b)
        d_keep = nms(d_b, d_s, 0.5)
        d_bkeep = batched_nms(d_b, d_s, cuda.to_device(np.arange(40) % 2), 0.5)
        d_dec = BoxCoder().decode(d_deltas, d_b)
    for d in (d_iou, d_keep, d_bkeep, d_dec):
        assert kernels.is_device_array(d)
    np.testing.assert_allclose(d_iou.copy_to_host(), reference(box_iou, b, b), rtol=1e-6)
    np.testing.assert_array_equal(d_keep.copy_to_host(), reference(nms, b, s, 0.5))
    np.testing.assert_array_equal(
        d_bkeep.copy_to_host(), reference(batched_nms, b, s, np.arange(40) % 2, 0.5)
    )
    assert_decoded_close(d_dec.copy_to_host(), reference(BoxCoder().decode, deltas, b))


@pytest.mark.cuda
def test_the_reference_refuses_device_arrays_with_a_hint():
    d = cuda.to_device(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="device arrays need the 'cuda' backend"):
        box_iou(d, d)


# --- empty inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_return_empty_outputs_of_the_right_shape_and_dtype(backend):
    empty = np.zeros((0, 4), np.float32)
    one = np.array([[0, 0, 2, 2]], np.float32)
    with use_backend(backend):
        assert box_iou(empty, one).shape == (0, 1)
        assert box_iou(one, empty).dtype == np.float32
        keep = nms(empty, np.zeros(0, np.float32), 0.5)
        assert keep.shape == (0,) and keep.dtype == np.int64
        keep = batched_nms(empty, np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5)
        assert keep.shape == (0,) and keep.dtype == np.int64
        decoded = BoxCoder().decode(np.zeros((0, 8), np.float32), empty)
        assert decoded.shape == (0, 8) and decoded.dtype == np.float32


# --- torchvision parity on every backend -------------------------------------------------


@pytest.fixture(scope="module")
def tv():
    return dict(np.load(FIXTURES))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_iou_and_decode_equal_torchvision(tv, backend):
    union_zero = np.isnan(tv["iou"])
    with use_backend(backend):
        iou = box_iou(tv["iou_a"], tv["iou_b"])
        decoded = {
            name: BoxCoder(tuple(tv[f"{name}_weights"])).decode(
                tv["decode_deltas"], tv["code_anchors"]
            )
            for name in ("rpn", "head")
        }
    np.testing.assert_allclose(iou[~union_zero], tv["iou"][~union_zero], rtol=1e-5, atol=1e-7)
    assert (iou[union_zero] == 0).all()
    for name, got in decoded.items():
        assert_decoded_close(got, tv[f"{name}_decoded"])


@pytest.mark.parametrize("case", range(4))
def test_numba_nms_equals_torchvision(tv, case):
    b, s, t = tv[f"nms{case}_boxes"], tv[f"nms{case}_scores"], float(tv[f"nms{case}_threshold"])
    np.testing.assert_array_equal(on("numba", nms, b, s, t), tv[f"nms{case}_keep"])


@pytest.mark.parametrize("case", range(3))
def test_numba_batched_nms_equals_torchvision(tv, case):
    b, s = tv[f"bnms{case}_boxes"], tv[f"bnms{case}_scores"]
    idxs, t = tv[f"bnms{case}_idxs"], float(tv[f"bnms{case}_threshold"])
    np.testing.assert_array_equal(on("numba", batched_nms, b, s, idxs, t), tv[f"bnms{case}_keep"])


@pytest.mark.cuda
def test_cuda_nms_and_batched_nms_equal_torchvision(tv):
    # The fixtures' smaller cases (the simulator pays per thread): 200 and 250 boxes.
    b, s, t = tv["nms3_boxes"], tv["nms3_scores"], float(tv["nms3_threshold"])
    np.testing.assert_array_equal(on("cuda", nms, b, s, t), tv["nms3_keep"])
    b, s = tv["bnms2_boxes"], tv["bnms2_scores"]
    idxs, t = tv["bnms2_idxs"], float(tv["bnms2_threshold"])
    np.testing.assert_array_equal(on("cuda", batched_nms, b, s, idxs, t), tv["bnms2_keep"])


# --- the real CUDA compiler --------------------------------------------------------------

_COMPILE_FOR_A_GPU = """
import numpy as np
from numba import cuda, types as T
from tinymaskrcnn.kernels import cuda_boxes as cb
for f in (T.float32, T.float64):
    a2 = f[:, ::1]
    own = cb.KERNELS[np.dtype(f.name)]
    signatures = {
        own["iou"]: (a2, a2, f, a2),
        cb._gather_sorted: (a2, T.int64[::1], T.int64[::1], T.boolean, a2, T.int64[::1]),
        own["nms_mask"]: (a2, T.int64[::1], T.float64, f, T.uint64[:, ::1]),
        cb._nms_reduce_kernel: (
            T.uint64[:, ::1], T.int64[::1], T.uint64[::1], T.int64[::1], T.int64[::1]
        ),
        own["decode"]: (a2, a2, f, f, f, f, f, f, a2),
    }
    for kernel, signature in signatures.items():
        cuda.compile_ptx(kernel.py_func, signature, cc=(8, 0))
print("compiled")
"""


@pytest.mark.cuda
def test_cuda_kernels_compile_to_ptx_for_a_real_gpu():
    # The simulator runs kernels as Python and forgives typing errors that Numba's CUDA
    # compiler would reject (tests/real_compiler.py).
    assert "compiled" in run_outside_the_simulator(_COMPILE_FOR_A_GPU)
