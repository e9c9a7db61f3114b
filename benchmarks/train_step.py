"""Time one training step of the shapes preset, ours against torchvision, and profile ours.

    python benchmarks/train_step.py              # batch 4 of 128 x 128 shapes, 2 threads
    python benchmarks/train_step.py --threads 1  # the threads the shapes recipe trains on
    python benchmarks/train_step.py --threads 1 --trained   # steps of the trained model

The steps of a model that has learnt cost more than its first steps: its proposals
overlap the objects, so the mask head runs on its full share of positive RoIs (40-90 a
batch of 4 for the shipped model, about 30 at the start). ``--trained`` times those, both
models starting from the shipped weights (benchmarks/RESULTS.md, 2026-12-07: 233 ms a
step against about 175 ms from the seeded weights, one thread).

A step is what ``tinymaskrcnn train`` does per batch: forward in train mode (the five
losses), backward, one SGD update. Both models start from the same weights (ours,
seeded, copied by name into torchvision's twin of the module tree:
``torchvision_twin.py``) and see the same batches (``train.batch_at`` of the shapes
training set). torchvision runs in a child process (Numba's and torch's OpenMP runtimes
must not share one process's settings, see benchmarks/backbone.py), with the same
thread count. Times are medians of ``--steps`` steps after ``--warmup`` (Numba
compilation excluded); the ratio is torchvision's time over ours (above 1: we are
faster). Without torch only our numbers are printed.

Then one profile of ours (cProfile over ``--profile-steps`` further steps): time by
stage, forward and backward, and the functions that take the most time themselves.
cProfile slows Python-heavy code more than kernels: read its shares, not its times.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pathlib
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def _set_threads(n: int) -> None:
    # OpenBLAS and OpenMP read these when first loaded: set them before numpy is imported.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def setup(batch_size, trained=False):
    """(config, our model in train mode, optimizer settings, dataset, batch function).

    trained: start from the shipped shapes model instead of the seeded initial weights.
    """
    import numpy as np

    from tinymaskrcnn.config import MaskRCNNConfig
    from tinymaskrcnn.data.shapes import ShapesDataset
    from tinymaskrcnn.model import MaskRCNN
    from tinymaskrcnn.train import batch_at
    from tinymaskrcnn.train_state import TrainSettings

    cfg = MaskRCNNConfig.shapes()
    settings = TrainSettings(batch_size=batch_size)
    model = MaskRCNN(cfg, rng=np.random.default_rng(settings.seed))
    if trained:
        model.load_state_dict(MaskRCNN.from_pretrained("shapes").state_dict())
    model.train()
    dataset = ShapesDataset(64, image_size=cfg.min_size, seed=settings.train_seed)

    def batch(step):
        return batch_at(dataset, step, settings.batch_size, settings.seed, settings.hflip)

    return cfg, model, settings, dataset, batch


def timed_steps(step_fn, warmup, steps):
    for s in range(warmup):
        step_fn(s)
    times = []
    for s in range(warmup, warmup + steps):
        start = time.perf_counter()
        step_fn(s)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for BLAS, Numba, torch")
    parser.add_argument("--batch", type=int, default=4, help="images per step (the preset's 4)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15, help="timed steps")
    parser.add_argument(
        "--trained",
        action="store_true",
        help="start both from the shipped shapes model: the steps of a trained model, whose "
        "proposals overlap the objects, so the mask head runs on more RoIs",
    )
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=10,
        help="steps under cProfile after the timed ones (0: no profile)",
    )
    parser.add_argument("--torchvision-only", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag, low in (
        ("threads", 1),
        ("batch", 1),
        ("warmup", 0),
        ("steps", 1),
        ("profile_steps", 0),
    ):
        if getattr(args, flag) < low:
            parser.error(f"--{flag.replace('_', '-')} must be >= {low}; got {getattr(args, flag)}")
    _set_threads(args.threads)
    if args.torchvision_only:
        return torchvision_steps(args)
    child_env = dict(os.environ)  # torch keeps its own OpenMP defaults
    # What kernels/__init__.py sets before the first kernel loads, needed here because
    # numba.get_num_threads() below starts Numba's OpenMP workers first: with GNU
    # OpenMP's default (spinning) policy every step runs ~10x slower on 2 cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import numba
    import numpy as np

    from tinymaskrcnn.kernels import use_backend
    from tinymaskrcnn.train import _step
    from tinymaskrcnn.train_state import make_optimizer

    cfg, model, settings, dataset, batch = setup(args.batch, args.trained)
    optimizer = make_optimizer(model, settings)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; threads {args.threads} "
        f"(numba {numba.get_num_threads()}, BLAS, torch); python {platform.python_version()}, "
        f"numpy {np.__version__}, numba {numba.__version__}"
    )
    start = "the shipped model" if args.trained else "seeded initial weights"
    print(f"shapes preset, batch {args.batch} x 3 x {cfg.min_size} x {cfg.max_size}, from "
          f"{start}, median of {args.steps} steps after {args.warmup}")  # fmt: skip

    def ours(s):
        _step(model, optimizer, dataset, settings, s)

    with use_backend("numba"):
        t_ours, best_ours = timed_steps(ours, args.warmup, args.steps)
    print(f"  tinymaskrcnn numba  median {t_ours * 1e3:7.1f} ms, best {best_ours * 1e3:7.1f} ms")

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "torchvision.npz")
        cmd = [sys.executable, __file__, "--torchvision-only", out]
        for flag in ("threads", "batch", "warmup", "steps"):
            cmd += [f"--{flag}", str(getattr(args, flag))]
        cmd += ["--trained"] if args.trained else []
        done = subprocess.run(cmd, env=child_env, capture_output=True, text=True)
        if done.returncode != 0 or not os.path.exists(out):
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"  torchvision not run ({last}): our numbers only")
        else:
            result = np.load(out)
            t_tv, best_tv = result["time"]
            print(f"  torchvision CPU     median {t_tv * 1e3:7.1f} ms, "
                  f"best {best_tv * 1e3:7.1f} ms (torch {result['version']})")  # fmt: skip
            print(f"  ratio torchvision / ours: {t_tv / t_ours:.2f}x median, "
                  f"{best_tv / best_ours:.2f}x best")  # fmt: skip

    if args.profile_steps:
        profile(model, optimizer, dataset, settings, args)
    return 0


# Stage -> the functions (file, name) whose cumulative time is that stage's.
STAGES = {
    "transform (resize, batch)": [("transform.py", "__call__")],
    "backbone + FPN forward": [("fpn.py", "forward")],
    "RPN forward (head, proposals, loss)": [("rpn.py", "forward")],
    "RoI heads forward (sampling, RoIAlign, heads, losses)": [("roi_heads.py", "forward")],
    "RoI heads backward": [("roi_heads.py", "backward")],
    "RPN backward": [("rpn.py", "backward")],
    "backbone + FPN backward": [("fpn.py", "backward")],
    "SGD update": [("optim.py", "step")],
}
KERNELS = {
    "convolution forward (nn/conv.py)": [("conv.py", "forward")],
    "convolution backward (nn/conv.py)": [("conv.py", "backward")],
    "RoIAlign forward": [("numba_roi_ops.py", "roi_align")],
    "RoIAlign backward": [("numba_roi_ops.py", "roi_align_backward")],
    "NMS (nms, batched_nms)": [("numba_boxes.py", "nms"), ("numba_boxes.py", "batched_nms")],
    "box IoU (matching)": [("numba_boxes.py", "box_iou")],
}


def profile(model, optimizer, dataset, settings, args):
    from tinymaskrcnn.kernels import use_backend
    from tinymaskrcnn.train import _step

    profiler = cProfile.Profile()
    first = args.warmup + args.steps
    with use_backend("numba"):
        start = time.perf_counter()
        profiler.enable()
        for s in range(first, first + args.profile_steps):
            _step(model, optimizer, dataset, settings, s)
        profiler.disable()
        wall = (time.perf_counter() - start) / args.profile_steps
    stats = pstats.Stats(profiler)
    cumulative = {}
    for (path, _, name), (_, _, _, ct, _) in stats.stats.items():
        key = (os.path.basename(path), name)
        if "tinymaskrcnn" in path:
            cumulative[key] = max(cumulative.get(key, 0.0), ct)
    per_step = stats.total_tt / args.profile_steps
    print(f"\nprofile of ours: {args.profile_steps} steps under cProfile, {wall * 1e3:.0f} ms a "
          f"step (profiled); share of the step:")  # fmt: skip
    for title, table in (("by stage", STAGES), ("by operation (inside the stages)", KERNELS)):
        print(f"  {title}:")
        for label, functions in table.items():
            t = sum(cumulative.get(f, 0.0) for f in functions) / args.profile_steps
            print(f"    {label:56s} {t * 1e3:7.1f} ms  {100 * t / per_step:5.1f} %")
    print("  functions by own time (top 10):")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:10]
    for (path, line, name), (_, calls, tt, _, _) in rows:
        where = f"{os.path.basename(path)}:{line} {name}" if line else name
        share = 100 * tt / stats.total_tt
        print(f"    {where[:64]:64s} {tt / args.profile_steps * 1e3:7.1f} ms  "
              f"{share:5.1f} %  ({calls // args.profile_steps} calls a step)")  # fmt: skip


def torchvision_steps(args):
    """Child process: time the torchvision twin's training steps; save to args.out."""
    import numpy as np
    import torch
    from torchvision_twin import load_ours, torchvision_twin

    torch.set_num_threads(args.threads)
    cfg, model, settings, dataset, batch = setup(args.batch, args.trained)
    twin = torchvision_twin(cfg)
    load_ours(twin, model.state_dict())
    twin.train()
    del model
    optimizer = torch.optim.SGD(
        [p for p in twin.parameters() if p.requires_grad],
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )

    def step(s):
        images, targets = batch(s)
        losses = twin(
            [torch.from_numpy(im) for im in images],
            [{k: torch.from_numpy(np.asarray(v)) for k, v in t.items()} for t in targets],
        )
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()

    t = np.array(timed_steps(step, args.warmup, args.steps))
    np.savez(args.torchvision_only, time=t, version=torch.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
