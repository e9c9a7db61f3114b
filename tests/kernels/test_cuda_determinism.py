"""Every CUDA kernel gives the same bits each time it runs, whatever its thread blocks.

A launch whose result depends on thread timing has a race in it (a missing barrier,
shared memory reused too early, two threads writing one cell), and a GPU, running
thousands of threads truly at once, hits a race harder than Numba's simulator. The conv
backward once failed about one run in ten under the simulator that way (the cause is
named in tests/conftest.py). So each kernel here runs the same launch ``REPEATS`` times
with its own block shapes and once more with small blocks (many more blocks, every
block edge somewhere else), and every result must equal the first byte for byte: a -0.0
for a 0.0 or another NaN payload counts as a difference too.

Why bit-for-bit is the right demand, kernel by kernel:

* One thread per output (IoU, box decoding, NMS's mask words, im2col, col2im, the bias
  add, the RoIAlign and RoIPool forwards, the layer kernels between convolutions): an
  output's arithmetic is one thread's, in program order, and does not depend on where
  block edges fall.
* The tiled matrix product of the conv: each thread adds its K products in k order,
  tile after tile, so the tile size changes which thread loads what, not the sum.
* NMS's reduction: one block walks the boxes in order between barriers.
* The RoIAlign and RoIPool backwards scatter with ``cuda.atomic.add``: the adds into one
  cell land in arrival order, and float addition is not associative, so in general the
  result is reproducible only to rounding (torchvision's CUDA RoIAlign backward is
  nondeterministic for the same reason). What does hold bit for bit: when every addend
  and every partial sum is exactly representable, the sum is exact in any order. The
  backward tests build that case (sample points on a 1/8 grid, integer gradients, so
  the bilinear weights are multiples of 1/64 and the sums are exact), where the result
  must also equal the NumPy reference's exactly.

The shapes are tiny: under the simulator each CUDA thread is a Python thread.
"""

import numpy as np
import pytest

from tinymaskrcnn import kernels, nn
from tinymaskrcnn.boxes import batched_nms, box_decode, box_iou, nms
from tinymaskrcnn.fpn import add_top_down
from tinymaskrcnn.kernels import cuda_boxes, cuda_conv, cuda_layers, cuda_roi_ops, use_backend
from tinymaskrcnn.roi_ops import roi_align, roi_align_backward, roi_pool, roi_pool_backward

pytestmark = pytest.mark.cuda

REPEATS = 3
# Launch-configuration constants read by the host wrappers at every call (block shapes
# only: each kernel indexes its work from cuda.grid, so any shape covers it).
SMALL_BLOCKS = [
    (cuda_boxes, "_THREADS_2D", (4, 8)),
    (cuda_boxes, "_THREADS_1D", 16),
    (cuda_conv, "_THREADS_2D", (4, 4)),
    (cuda_roi_ops, "_THREADS", 32),
    (cuda_layers, "_THREADS", 8),
]


def _host(result):
    if isinstance(result, tuple):
        return tuple(_host(r) for r in result)
    return np.array(kernels.to_host(result))


def launches(run, monkeypatch):
    """``run()``'s results (host arrays) from REPEATS calls, then one with small blocks."""
    with use_backend("cuda"):
        results = [_host(run()) for _ in range(REPEATS)]
        with monkeypatch.context() as patch:
            for module, name, value in SMALL_BLOCKS:
                patch.setattr(module, name, value)
            results.append(_host(run()))
    return results


def assert_same_bits(results):
    first = results[0] if isinstance(results[0], tuple) else (results[0],)
    for i, result in enumerate(results[1:], start=1):
        result = result if isinstance(result, tuple) else (result,)
        for j, (a, b) in enumerate(zip(first, result, strict=True)):
            where = f"output {j} of launch {i} ({'small blocks' if i == REPEATS else 'repeat'})"
            assert a.dtype == b.dtype and a.shape == b.shape, where
            if a.tobytes() != b.tobytes():
                differ = np.unique(
                    np.flatnonzero(a.view(np.uint8) != b.view(np.uint8)) // a.itemsize
                )
                raise AssertionError(
                    f"{where} differs from launch 0 at flat indices {differ[:8].tolist()}: "
                    f"{a.ravel()[differ[:4]]} vs {b.ravel()[differ[:4]]}"
                )


def _boxes(rng, n, dtype):
    corners = rng.uniform(0, 40, (n, 2))
    sizes = rng.uniform(0, 25, (n, 2))
    return np.concatenate([corners, corners + sizes], axis=1).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_iou_gives_the_same_bits_every_launch(dtype, monkeypatch):
    rng = np.random.default_rng(1)
    a, b = _boxes(rng, 10, dtype), _boxes(rng, 12, dtype)
    assert_same_bits(launches(lambda: box_iou(a, b), monkeypatch))


def test_nms_and_batched_nms_keep_the_same_boxes_every_launch(monkeypatch):
    # 70 boxes: two tiles of 64, so words of both tiles and both halves of the walk count.
    rng = np.random.default_rng(2)
    b = _boxes(rng, 70, np.float32)
    scores = rng.permutation(70).astype(np.float32)
    idxs = rng.integers(0, 3, 70)

    def run():
        return nms(b, scores, 0.3), batched_nms(b, scores, idxs, 0.3)

    results = launches(run, monkeypatch)
    assert_same_bits(results)
    assert 1 < len(results[0][0]) < 70, "NMS kept all or one: the test decides nothing"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_decode_gives_the_same_bits_every_launch(dtype, monkeypatch):
    rng = np.random.default_rng(3)
    anchors = _boxes(rng, 20, dtype)
    deltas = rng.normal(0, 1, (20, 8)).astype(dtype)
    weights = (10.0, 10.0, 5.0, 5.0)
    assert_same_bits(launches(lambda: box_decode(deltas, anchors, weights), monkeypatch))


def test_conv2d_and_its_backward_give_the_same_bits_every_launch(monkeypatch):
    # Two images: the weight and bias gradients accumulate over them.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    gy = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)

    def run():
        return (nn.conv2d(x, w, b, 1, 1), *nn.conv2d_backward(gy, x, w, 1, 1))

    assert_same_bits(launches(run, monkeypatch))


def test_the_layer_kernels_give_the_same_bits_every_launch(monkeypatch):
    # They run on device arrays only (cuda_layers.py): each launch gets its own copies.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    coarse = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)

    def run():
        d = kernels.to_device
        return (
            nn.bias_add_relu_(d(x.copy()), bias, d(x)),
            nn.ReLU().eval()(d(x)),
            *nn.max_pool2d(d(x), 3, 2, 1),
            add_top_down(d(x.copy()), d(coarse)),
        )

    assert_same_bits(launches(run, monkeypatch))


def _roi_problem(dtype):
    """Features, RoIs whose samples lie on a 1/8 grid, and integer output gradients.

    RoIs (legacy alignment, scale 1) start at multiples of 1/4 with widths 3 and heights
    2 over 2 x 2 bins of 2 x 2 samples: sample coordinates are multiples of 1/8, so each
    bilinear weight is a multiple of 1/64 and, with gradients in {-3..3} / 4 samples,
    every atomic addend a multiple of 1/256 far below 2**-24 of the cell's range: exact.
    """
    rng = np.random.default_rng(5)
    features = rng.standard_normal((2, 2, 5, 6)).astype(dtype)
    x1 = rng.integers(0, 8, 6) / 4
    y1 = rng.integers(0, 8, 6) / 4
    rois = np.stack([rng.integers(0, 2, 6), x1, y1, x1 + 3, y1 + 2], axis=1).astype(dtype)
    grad_out = rng.integers(-3, 4, (6, 2, 2, 2)).astype(dtype)
    return features, rois, grad_out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roi_align_gives_the_same_bits_every_launch(dtype, monkeypatch):
    features, rois, _ = _roi_problem(dtype)
    assert_same_bits(launches(lambda: roi_align(features, rois, (2, 2), 1.0, 2), monkeypatch))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roi_align_backward_on_exact_sums_gives_the_references_bits_every_launch(
    dtype, monkeypatch
):
    features, rois, grad_out = _roi_problem(dtype)
    shape = features.shape
    results = launches(lambda: roi_align_backward(grad_out, rois, shape, 1.0, 2), monkeypatch)
    assert_same_bits([roi_align_backward(grad_out, rois, shape, 1.0, 2), *results])
    assert np.count_nonzero(results[0]) > 10


def test_roi_pool_and_its_backward_give_the_same_bits_every_launch(monkeypatch):
    # Integer gradients: the atomic sums are exact, as for RoIAlign's.
    features, rois, grad_out = _roi_problem(np.float32)

    def run():
        out, argmax = roi_pool(features, rois, (2, 2))
        return out, argmax, roi_pool_backward(grad_out, argmax, rois, features.shape)

    results = launches(run, monkeypatch)
    assert_same_bits(results)
    out, argmax = roi_pool(features, rois, (2, 2))
    reference = (out, argmax, roi_pool_backward(grad_out, argmax, rois, features.shape))
    assert_same_bits([reference, results[0]])
