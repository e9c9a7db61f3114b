"""Time RoIAlign and RoIPool, forward and backward, on every backend and torchvision.

    python benchmarks/roi_ops.py              # 1000 RoIs on (1,256,200,200), the sizes of
                                              # docs/architecture.md, Benchmarks
    python benchmarks/roi_ops.py --quick      # 200 RoIs on (1,64,100,100)
    python benchmarks/roi_ops.py --training   # a shapes training step's box RoIs: 512 RoIs
                                              # (128 per image) on a (4,64,32,32) P2 map
    python benchmarks/roi_ops.py --cuda       # add the CUDA backend (needs a real GPU)

RoIs to 7x7, sampling_ratio 2, spatial_scale 1/4 (a P2-like map of an 800-pixel image).
Torchvision's CPU ops and Numba both get 2 threads (``--threads``) for a fair comparison.
The backward passes are timed on their own: torchvision's through
``torch.ops.torchvision._roi_align_backward`` / ``_roi_pool_backward`` (the ops autograd
calls), ours through ``roi_align_backward`` / ``roi_pool_backward``. The NumPy reference
is timed once (it is the specification, not a fast path) and only with ``--reference``.
Median of ``--repeat`` rounds after a warm-up of each (benchmarks/timing.py: the
compilation, then a second of calls, past the VM's first touch of fresh memory); within a
round the contenders run in turn, so all of them share the same machine load.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from timing import timed_interleaved  # benchmarks/timing.py, beside this script


def make_problem(rng, n_rois, channels, size, scale, images=1, sides=(16, 256)):
    features = rng.normal(size=(images, channels, size, size)).astype(np.float32)
    image = size / scale
    centre = rng.uniform(0, image, size=(n_rois, 2))
    side = rng.uniform(*sides, size=(n_rois, 2))
    boxes = np.clip(np.concatenate([centre - side / 2, centre + side / 2], axis=1), 0, image)
    batch = np.sort(rng.integers(0, images, n_rois))[:, None]
    rois = np.concatenate([batch, boxes], axis=1).astype(np.float32)
    return features, rois


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller problem")
    parser.add_argument("--training", action="store_true", help="the shapes preset's training size")
    parser.add_argument("--cuda", action="store_true", help="also time the CUDA backend")
    parser.add_argument("--reference", action="store_true", help="also time the NumPy reference")
    parser.add_argument("--threads", type=int, default=2, help="threads for numba and torch")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    from tinymaskrcnn.kernels import use_backend
    from tinymaskrcnn.roi_ops import roi_align, roi_align_backward, roi_pool, roi_pool_backward

    scale, out, ratio = 0.25, (7, 7), 2
    rng = np.random.default_rng(0)
    if args.training:
        # Batch 4 of 128 x 128 images, 128 sampled RoIs each (box_batch_size_per_image),
        # shapes of 8..128 px, 64 FPN channels, all on P2 (the worst case of one level).
        n_rois, channels, size = 512, 64, 32
        features, rois = make_problem(rng, n_rois, channels, size, scale, 4, (8, 128))
    else:
        n_rois, channels, size = (200, 64, 100) if args.quick else (1000, 256, 200)
        features, rois = make_problem(rng, n_rois, channels, size, scale)
    grad_out = rng.normal(size=(n_rois, channels, *out)).astype(np.float32)
    print(
        f"{n_rois} RoIs on {features.shape} float32 -> {out}, sampling_ratio {ratio}, "
        f"{args.threads} threads, median of {args.repeat}"
    )

    backends = ["numba"] + (["cuda"] if args.cuda else []) + (["numpy"] if args.reference else [])
    _, argmax = roi_pool(features, rois, out, scale)

    def ours(backend, function, *a):
        def run():
            with use_backend(backend):
                return function(*a)

        return run

    contenders = {}  # op -> implementation -> callable
    for backend in backends:
        for op, function, a in (
            ("RoIAlign forward", roi_align, (features, rois, out, scale, ratio)),
            (
                "RoIAlign backward",
                roi_align_backward,
                (grad_out, rois, features.shape, scale, ratio),
            ),
            ("RoIPool forward", roi_pool, (features, rois, out, scale)),
            ("RoIPool backward", roi_pool_backward, (grad_out, argmax, rois, features.shape)),
        ):
            contenders.setdefault(op, {})[backend] = ours(backend, function, *a)

    try:
        import torch
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    except ImportError:
        torch = None
        print("torchvision not installed: no comparison")
    if torch is not None:
        torch.set_num_threads(args.threads)
        f_t, r_t, g_t = (torch.from_numpy(a) for a in (features, rois, grad_out))
        tv = torch.ops.torchvision
        _, am_t = tv.roi_pool(f_t, r_t, scale, *out)
        n, c, h, w = features.shape
        contenders["RoIAlign forward"]["torchvision"] = lambda: tv.roi_align(
            f_t, r_t, scale, *out, ratio, False
        )
        contenders["RoIAlign backward"]["torchvision"] = lambda: tv._roi_align_backward(
            g_t, r_t, scale, *out, n, c, h, w, ratio, False
        )
        contenders["RoIPool forward"]["torchvision"] = lambda: tv.roi_pool(f_t, r_t, scale, *out)
        contenders["RoIPool backward"]["torchvision"] = lambda: tv._roi_pool_backward(
            g_t, r_t, am_t, scale, *out, n, c, h, w
        )

    rows = {}  # implementation -> op -> seconds
    for op, functions in contenders.items():
        # The NumPy reference runs once: it is the specification, not a fast path.
        slow = {k: v for k, v in functions.items() if k == "numpy"}
        fast = {k: v for k, v in functions.items() if k != "numpy"}
        for name, seconds in {
            **timed_interleaved(fast, args.repeat),
            **timed_interleaved(slow, 1, seconds=0),
        }.items():
            rows.setdefault(name, {})[op] = seconds

    names = list(rows)
    print(
        f"{'op':<20}"
        + "".join(f"{b:>14}" for b in names)
        + "".join(f"{'tv/' + b:>12}" for b in names if b != "torchvision" and "torchvision" in rows)
    )
    for op in next(iter(rows.values())):
        line = f"{op:<20}" + "".join(f"{rows[b][op] * 1e3:>11.1f} ms" for b in names)
        if "torchvision" in rows:
            tv = rows["torchvision"][op]
            line += "".join(f"{tv / rows[b][op]:>11.2f}x" for b in names if b != "torchvision")
        print(line)
    print(f"(ratio > 1: tinymaskrcnn is faster; machine: {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
