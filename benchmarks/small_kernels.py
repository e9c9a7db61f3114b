"""Time the numba kernels' two choices by size: RoIAlign's layout, and one thread or all.

    python benchmarks/small_kernels.py            # the shapes model's sizes and the standard ones
    python benchmarks/small_kernels.py --repeat 51

1. RoIAlign forward (7 x 7 or 14 x 14, sampling 2, float32) read plane by plane or from a
   channels-last copy of the map (``numba_roi_ops._CHANNELS_LAST_MIN_SAMPLES_PER_CELL``
   forced each way), on the shapes model's box and mask RoIs, a training step's box RoIs,
   the standard 1000 RoIs on (1, 256, 200, 200), and 10 mask RoIs on an R50-sized P2
   (where the copy of the map costs more than it saves). The rule's choice is marked.
2. im2col of the shapes model's 3 x 3 convolutions (and col2im of the same columns) on one
   thread and on every thread (``numba_threads.PARALLEL_MIN_WORK`` forced each way): the
   cost of waking Numba's sleeping workers against the work. The rule's choice is marked.

Median microseconds of ``--repeat`` calls after a warm-up; within a round the two choices
run in turn, so they share whatever else the machine does (benchmarks/timing.py's
``timed_interleaved``). Needs only tinymaskrcnn (no torch): these are our own choices.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="Numba's threads (default 2)")
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args(argv)
    for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as kernels/__init__.py sets it

    import numba
    import numpy as np
    from roi_ops import make_problem
    from timing import timed_interleaved

    from tinymaskrcnn import kernels
    from tinymaskrcnn.kernels import numba_roi_ops, numba_threads
    from tinymaskrcnn.roi_ops.align import roi_align_geometry

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; numba threads "
        f"{numba.get_num_threads()}; python {platform.python_version()}, numpy "
        f"{np.__version__}, numba {numba.__version__}; median of {args.repeat}, microseconds"
    )

    def forced(module, name, value, function):
        def run():
            saved = getattr(module, name)
            setattr(module, name, value)
            try:
                return function()
            finally:
                setattr(module, name, saved)

        return run

    never = 1 << 62
    print("\nRoIAlign forward          samples/cell    planes  channels-last  rule takes")
    rng = np.random.default_rng(0)
    problems = [
        ("shapes box head", 100, 64, 32, 1, (7, 7), (8, 128)),
        ("shapes mask head", 5, 64, 32, 1, (14, 14), (40, 64)),
        ("shapes training box", 512, 64, 32, 4, (7, 7), (8, 128)),
        ("standard 1000 RoIs", 1000, 256, 200, 1, (7, 7), (16, 256)),
        ("10 mask RoIs, big map", 10, 256, 200, 1, (14, 14), (32, 128)),
    ]
    for name, n_rois, channels, size, images, out, sides in problems:
        features, rois = make_problem(rng, n_rois, channels, size, 0.25, images, sides)
        geometry = roi_align_geometry(rois, out, 0.25, 2, False)
        per_cell = n_rois * out[0] * out[1] * 4 / (images * size * size)

        def layout(value, features=features, geometry=geometry, out=out):
            return forced(
                numba_roi_ops,
                "_CHANNELS_LAST_MIN_SAMPLES_PER_CELL",
                value,
                lambda: numba_roi_ops.roi_align(features, geometry, out, "avg"),
            )

        t = timed_interleaved({"planes": layout(never), "last": layout(0)}, args.repeat)
        rule = numba_roi_ops._CHANNELS_LAST_MIN_SAMPLES_PER_CELL
        takes = "channels-last" if per_cell >= rule else "planes"
        print(
            f"  {name:22s} {per_cell:12.2f} {1e6 * t['planes']:9.0f} {1e6 * t['last']:14.0f}"
            f"  {takes}"
        )

    im2col = kernels.kernel("im2col", "numba")
    col2im = kernels.kernel("col2im", "numba")
    print("\nim2col / col2im (3 x 3)     elements   1 thread  all threads  rule takes")
    for n, c, h, stride in [
        (1, 16, 32, 1),
        (1, 64, 8, 1),
        (1, 128, 4, 1),
        (5, 64, 14, 1),
        (4, 16, 32, 1),
        (4, 64, 32, 1),
        (4, 64, 64, 1),
        (1, 3, 128, 2),
    ]:
        xp = rng.standard_normal((n, c, h + 2, h + 2)).astype(np.float32)
        rows = (0, (h + 2 - 3) // stride + 1)
        geometry = ((3, 3), (stride, stride), (1, 1), rows)
        cols = im2col(xp, *geometry)
        for name, run in (
            ("im2col", lambda xp=xp, geometry=geometry: im2col(xp, *geometry)),
            ("col2im", lambda cols=cols, xp=xp, g=geometry: col2im(cols, np.zeros_like(xp), *g)),
        ):
            choices = {
                "one": forced(numba_threads, "PARALLEL_MIN_WORK", never, run),
                "all": forced(numba_threads, "PARALLEL_MIN_WORK", 0, run),
            }
            t = timed_interleaved(choices, args.repeat)
            takes = "all" if cols.size >= numba_threads.PARALLEL_MIN_WORK else "one"
            shape = f"{name} {n}x{c}x{h}x{h}/{stride}"
            print(
                f"  {shape:24s} {cols.size:10d} {1e6 * t['one']:10.0f} {1e6 * t['all']:12.0f}"
                f"  {takes}"
            )


if __name__ == "__main__":
    main()
