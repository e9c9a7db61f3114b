"""Time the box ops on every backend against torchvision, in one run.

    python benchmarks/ops.py            # IoU 5000 x 5000, NMS on 5000 boxes, decode 200k
    python benchmarks/ops.py --quick    # smaller sizes, for a smoke run

Backends: numpy (the reference), numba (CPU), cuda (only on a real GPU; the simulator is
not timed), and torchvision's CPU ops when torch is installed. torch and Numba get the
same number of threads (``--threads``, default 2) so the comparison is fair. Each time is
the median of several runs after a warm-up (Numba compilation excluded). Ratios are
torchvision's time over ours: above 1 means tinymaskrcnn is faster.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys

import numpy as np
from timing import median_time  # benchmarks/timing.py, beside this script


def random_boxes(rng, n, image_size=(800, 1216), min_size=16.0, max_size=256.0):
    h, w = image_size
    x1 = rng.uniform(0, w - min_size, n)
    y1 = rng.uniform(0, h - min_size, n)
    bw = rng.uniform(min_size, max_size, n)
    bh = rng.uniform(min_size, max_size, n)
    return np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and Numba")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement")
    args = parser.parse_args(argv)

    import numba

    from tinymaskrcnn.boxes import BoxCoder, batched_nms, box_iou, nms
    from tinymaskrcnn.kernels import use_backend

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    backends = ["numpy", "numba"]
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        try:
            from numba import cuda

            if cuda.is_available():
                backends.append("cuda")
        except Exception:
            pass
    try:
        import torch
        import torchvision
        from torchvision.models.detection import _utils as det_utils

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None

    n_iou, n_nms, n_decode = (1000, 1000, 20_000) if args.quick else (5000, 5000, 200_000)
    rng = np.random.default_rng(0)
    iou_a, iou_b = random_boxes(rng, n_iou), random_boxes(rng, n_iou)
    nms_boxes = random_boxes(rng, n_nms)
    nms_scores = rng.random(n_nms).astype(np.float32)
    # Issue #12's NMS problem: 10-200 px boxes in a 1000 x 1000 area, threshold 0.7 (the
    # RPN's), where few pairs intersect and a spatial search pays off most.
    sparse_boxes = random_boxes(rng, n_nms, (1000, 1000), 10.0, 200.0)
    sparse_scores = rng.random(n_nms).astype(np.float32)
    sparse_levels = rng.integers(0, 5, n_nms)  # batched_nms as the RPN calls it, per level
    anchors = random_boxes(rng, n_decode)
    deltas = rng.normal(0, 1, (n_decode, 4)).astype(np.float32)
    coder = BoxCoder()

    ours = {
        f"IoU {n_iou} x {n_iou}": lambda: box_iou(iou_a, iou_b),
        f"NMS {n_nms} boxes @ 0.5": lambda: nms(nms_boxes, nms_scores, 0.5),
        f"NMS {n_nms} sparse @ 0.7": lambda: nms(sparse_boxes, sparse_scores, 0.7),
        f"batched NMS {n_nms} sparse, 5 levels": lambda: batched_nms(
            sparse_boxes, sparse_scores, sparse_levels, 0.7
        ),
        f"decode {n_decode // 1000}k anchors": lambda: coder.decode(deltas, anchors),
    }
    theirs = {}
    if torch is not None:
        t_a, t_b = torch.from_numpy(iou_a), torch.from_numpy(iou_b)
        t_boxes, t_scores = torch.from_numpy(nms_boxes), torch.from_numpy(nms_scores)
        t_sparse, t_sparse_scores = torch.from_numpy(sparse_boxes), torch.from_numpy(sparse_scores)
        t_levels = torch.from_numpy(sparse_levels)
        t_anchors, t_deltas = torch.from_numpy(anchors), torch.from_numpy(deltas)
        tv_coder = det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0), math.log(1000.0 / 16))
        theirs = {
            f"IoU {n_iou} x {n_iou}": lambda: torchvision.ops.box_iou(t_a, t_b),
            f"NMS {n_nms} boxes @ 0.5": lambda: torchvision.ops.nms(t_boxes, t_scores, 0.5),
            f"NMS {n_nms} sparse @ 0.7": lambda: torchvision.ops.nms(
                t_sparse, t_sparse_scores, 0.7
            ),
            f"batched NMS {n_nms} sparse, 5 levels": lambda: torchvision.ops.batched_nms(
                t_sparse, t_sparse_scores, t_levels, 0.7
            ),
            f"decode {n_decode // 1000}k anchors": lambda: tv_coder.decode(t_deltas, [t_anchors]),
        }

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"threads {args.threads}; numpy {np.__version__}, numba {numba.__version__}"
        + (f", torch {torch.__version__}, torchvision {torchvision.__version__}" if torch else "")
    )
    print(f"python {sys.version.split()[0]}; times in ms (median of {args.repeats})\n")
    header = ["op"] + backends + (["torchvision"] if torch else [])
    header += [f"tv/{b}" for b in backends[1:]] if torch else []
    rows = []
    for name, fn in ours.items():
        times = {}
        for backend in backends:
            with use_backend(backend):
                repeats = 3 if backend == "numpy" else args.repeats
                times[backend] = median_time(fn, repeats)[0]
        row = [name] + [f"{times[b] * 1e3:.2f}" for b in backends]
        if torch is not None:
            tv = median_time(theirs[name], args.repeats)[0]
            row.append(f"{tv * 1e3:.2f}")
            row += [f"{tv / times[b]:.1f}x" for b in backends[1:]]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))

    # How much the numba NMS looks at: IoU lanes its tiles evaluate, against the pairs
    # that intersect (the least an exact NMS must consider) and all pairs.
    from tinymaskrcnn.boxes import score_order
    from tinymaskrcnn.kernels import numba_boxes

    print("\nnumba NMS work (IoU evaluations) against intersecting and all pairs:")
    for name, b, s, t, levels in (
        (f"NMS {n_nms} boxes @ 0.5", nms_boxes, nms_scores, 0.5, None),
        (f"NMS {n_nms} sparse @ 0.7", sparse_boxes, sparse_scores, 0.7, None),
        (f"batched NMS {n_nms} sparse, 5 levels", sparse_boxes, sparse_scores, 0.7, sparse_levels),
    ):
        with use_backend("numba"):
            overlaps = box_iou(b, b) > 0  # IoU > 0 exactly when the pair intersects
        if levels is not None:  # only pairs within a level count
            overlaps &= levels[:, None] == levels[None, :]
        intersecting = (int(overlaps.sum()) - int(overlaps.diagonal().sum())) // 2
        evaluations = numba_boxes.nms_iou_evaluations(b, score_order(s), t, levels)
        print(
            f"  {name}: {evaluations:,} evaluations, {intersecting:,} intersecting pairs "
            f"({evaluations / max(intersecting, 1):.1f}x), {len(b) * (len(b) - 1) // 2:,} pairs"
        )


if __name__ == "__main__":
    main()
