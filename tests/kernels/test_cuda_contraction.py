"""The CUDA box kernels make the reference's IoU decisions even where an FMA would not.

NVVM, the compiler behind numba-cuda, contracts a product feeding an add into one fused
multiply-add unless told otherwise, and ``cuda.jit`` has no option that tells it so. An
FMA rounds ``a * b + c`` once where the NumPy reference rounds the product and then the
sum, so an IoU within an ulp or so of the NMS threshold can land on the other side.
``cuda_boxes`` therefore writes every float product as ``mul`` (libdevice's ``mul.rn``,
which no compiler stage fuses; docs/architecture.md, Backends and dispatch).

The simulator has no FMA, so it cannot show the hazard: the first test shows it in
NumPy, by exact arithmetic, on box pairs built to sit on the threshold; the second runs
the kernels on those pairs and checks they decide as the reference; the third compiles
the kernels to PTX (where NVVM is installed; no GPU needed) and finds no FMA in them,
while the same arithmetic written with ``*`` gets one.
"""

from fractions import Fraction

import numpy as np
import pytest
from real_compiler import run_outside_the_simulator

from tinymaskrcnn.boxes import batched_nms, box_iou
from tinymaskrcnn.kernels import use_backend

pytestmark = pytest.mark.cuda

THRESHOLD = 0.5  # a float64, as torchvision and the reference compare it


def _round(exact, dtype):
    """``exact`` (a Fraction) rounded once to the nearest ``dtype``, ties to even."""
    if dtype == np.float64:
        return np.float64(float(exact))  # int / int division is correctly rounded
    guess = np.float32(float(exact))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.inf)]
    return min(
        candidates,
        key=lambda c: (abs(Fraction(float(c)) - exact), int(c.view(np.uint32)) & 1),
    )


def fma(a, b, c, dtype):
    """a * b + c rounded once, as a GPU's fused multiply-add computes it."""
    return _round(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)), dtype)


def iou_variants(a, b, dtype):
    """The pair's IoU as the reference writes it, then under each contraction NVVM may make.

    union = (area_a + area_b) - inter, each area and inter a product: the first add can
    absorb either area's product, the subtraction can absorb inter's, or both happen.
    """
    t = dtype.type
    dxa, dya, dxb, dyb = t(a[2] - a[0]), t(a[3] - a[1]), t(b[2] - b[0]), t(b[3] - b[1])
    w = max(t(min(a[2], b[2]) - max(a[0], b[0])), t(0))
    h = max(t(min(a[3], b[3]) - max(a[1], b[1])), t(0))
    inter, area_a, area_b = t(w * h), t(dxa * dya), t(dxb * dyb)
    unions = {
        "reference": t(t(area_a + area_b) - inter),
        "fma(area_a)": t(fma(dxa, dya, area_b, dtype) - inter),
        "fma(area_b)": t(fma(dxb, dyb, area_a, dtype) - inter),
        "fma(-inter)": fma(-w, h, t(area_a + area_b), dtype),
        "both": fma(-w, h, fma(dxa, dya, area_b, dtype), dtype),
    }
    return {name: t(inter / u) for name, u in unions.items()}


def threshold_pairs(dtype, pairs=40, window=40, seed=0):
    """Box pairs (a, b) whose reference IoU lies within a few ulps of THRESHOLD.

    a = [0, 0, aw, ah]; b's rows lie inside a's and b starts left of a, so the IoU grows
    with b's right edge s: bisect for the crossing, then take every float s in a window
    of ulps around it. Returns (a, b) stacked as (P, 4) arrays and the pairs, among
    them, whose decision some contraction would flip.
    """
    rng = np.random.default_rng(seed)
    t = dtype.type
    boxes_a, boxes_b, flipped = [], [], []
    while len(flipped) < pairs:
        aw, ah = t(rng.uniform(5, 100)), t(rng.uniform(5, 100))
        y1 = t(rng.uniform(0, 0.1) * ah)
        y2 = t(ah - rng.uniform(0, 0.1) * ah)
        x1 = t(-rng.uniform(0, 0.2) * aw)
        a = np.array([0, 0, aw, ah], dtype)

        def decision(s, a=a, x1=x1, y1=y1, y2=y2):
            return iou_variants(a, np.array([x1, y1, s, y2], dtype), dtype)

        lo, hi = t(0), aw
        if not decision(hi)["reference"] > THRESHOLD:
            continue
        for _ in range(80):
            mid = t((lo + hi) / 2)
            if mid in (lo, hi):
                break
            lo, hi = (lo, mid) if decision(mid)["reference"] > THRESHOLD else (mid, hi)
        s = hi
        for _ in range(window // 2):
            s = np.nextafter(s, t(-np.inf))
        for _ in range(window):
            b = np.array([x1, y1, s, y2], dtype)
            ious = decision(s)
            ref = ious["reference"] > THRESHOLD
            boxes_a.append(a)
            boxes_b.append(b)
            if any((v > THRESHOLD) != ref for v in ious.values()):
                flipped.append(len(boxes_a) - 1)
            s = np.nextafter(s, t(np.inf))
    return np.stack(boxes_a), np.stack(boxes_b), np.array(flipped)


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float64)])
def test_a_fused_multiply_add_would_flip_iou_decisions_at_the_threshold(dtype):
    a, b, flipped = threshold_pairs(dtype, pairs=10)
    assert len(flipped) >= 10
    for i in flipped[:3]:
        ious = iou_variants(a[i], b[i], dtype)
        assert any((v > THRESHOLD) != (ious["reference"] > THRESHOLD) for v in ious.values())
    # The emulation's reference is the NumPy reference's own arithmetic.
    with use_backend("numpy"):
        got = box_iou(a[flipped], b[flipped]).diagonal()
    expected = [iou_variants(a[i], b[i], dtype)["reference"] for i in flipped]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float64)])
def test_cuda_iou_and_nms_decide_as_the_reference_on_threshold_pairs(dtype):
    a, b, flipped = threshold_pairs(dtype, pairs=8, window=4, seed=1)
    a, b = a[flipped], b[flipped]
    with use_backend("numpy"):
        expected_iou = box_iou(a, b).diagonal()
    with use_backend("cuda"):
        got_iou = box_iou(a, b).diagonal()
    np.testing.assert_array_equal(got_iou, expected_iou)
    # Each pair its own category, a ahead of b: b survives exactly when IoU <= THRESHOLD.
    boxes = np.concatenate([a, b])
    scores = np.concatenate([np.full(len(a), 2.0), np.ones(len(b))]).astype(dtype)
    pair = np.concatenate([np.arange(len(a)), np.arange(len(b))])
    with use_backend("numpy"):
        expected = batched_nms(boxes, scores, pair, THRESHOLD)
    with use_backend("cuda"):
        got = batched_nms(boxes, scores, pair, THRESHOLD)
    np.testing.assert_array_equal(got, expected)
    survivors = np.isin(np.arange(len(a), 2 * len(a)), expected).sum()
    assert 0 < survivors < len(a), "all pairs on one side: nothing near the threshold decided"


_PTX = """
import numpy as np
from numba import cuda, types as T
from tinymaskrcnn.kernels import cuda_boxes

def written_with_times(boxes1, boxes2, zero, out):
    j, i = cuda.grid(2)
    if i >= out.shape[0] or j >= out.shape[1]:
        return
    ax1, ay1, ax2, ay2 = boxes1[i, 0], boxes1[i, 1], boxes1[i, 2], boxes1[i, 3]
    bx1, by1, bx2, by2 = boxes2[j, 0], boxes2[j, 1], boxes2[j, 2], boxes2[j, 3]
    w = max(min(ax2, bx2) - max(ax1, bx1), zero)
    h = max(min(ay2, by2) - max(ay1, by1), zero)
    inter = w * h
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    out[i, j] = inter / union if union > zero else zero

for f in (T.float32, T.float64):
    a2 = f[:, ::1]
    own = cuda_boxes.KERNELS[np.dtype(f.name)]
    for name, fn, signature in [
        ("times", written_with_times, (a2, a2, f, a2)),
        ("iou", own["iou"].py_func, (a2, a2, f, a2)),
        ("nms_mask", own["nms_mask"].py_func, (a2, T.int64[::1], T.float64, f, T.uint64[:, ::1])),
    ]:
        ptx, _ = cuda.compile_ptx(fn, signature, cc=(8, 0))
        print(f.name, name, ptx.count("fma.rn."), ptx.count("mul.rn."))
"""


def test_the_box_kernels_compile_without_fused_multiply_adds():
    stdout = run_outside_the_simulator(_PTX)
    counts = {}
    for line in stdout.split("\n"):
        if line:
            dtype, name, fmas, rounded = line.split()
            counts[dtype, name] = int(fmas), int(rounded)
    for dtype in ("float32", "float64"):
        assert counts[dtype, "times"][0] > 0, "NVVM no longer contracts: the hazard is gone"
        for name in ("iou", "nms_mask"):
            fmas, rounded = counts[dtype, name]
            assert fmas == 0 and rounded >= 3, (dtype, name, fmas, rounded)
