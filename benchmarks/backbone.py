"""Time the ResNet-50-FPN backbone on every backend against torchvision, in one run.

    python benchmarks/backbone.py            # one 800 x 1216 image; shapes model 2 x 128 x 128
    python benchmarks/backbone.py --quick    # 256 x 384, for a smoke run

1. Inference: ResNet-50-FPN (frozen batch norm) forward on one 800 x 1216 image, the
   same seeded weights loaded into ours and into torchvision's ``resnet_fpn_backbone``;
   the outputs are compared too. Accuracy: each float32 output's distance from a float64
   run of our NumPy reference on the same weights, torchvision's beside ours. Peak
   memory: NumPy's allocations of one forward (tracemalloc), and each process's maximum
   resident size (ours before torch is imported; torchvision's child's own).
2. Training: forward + backward of the shapes model's backbone (ResNet-18 at width
   0.25, batch norm, every stage trained, 64 FPN channels) on a batch of 2 x 128 x 128.

Backends: numpy (the reference), numba (CPU), cuda (only on a real GPU; the simulator is
not timed). torch, OpenBLAS and Numba all get ``--threads`` threads (default 2). Times
are medians of ``--repeats`` runs after a warm-up. Ratio = torchvision's time / ours
(above 1: tinymaskrcnn is faster). On machines that set OPENBLAS_CORETYPE or
OPENBLAS_L2_SIZE, run with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``: they slow
a current OpenBLAS down.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import tracemalloc

from timing import median_time  # benchmarks/timing.py, beside this script (no numpy)


def _set_threads(n: int) -> None:
    # OpenBLAS reads these when numpy is first imported: set them before.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small image (a smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="threads for BLAS, Numba, torch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--backends", nargs="+", help="ours to time (default: every available)")
    parser.add_argument("--torchvision-only", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _set_threads(args.threads)
    if args.torchvision_only:
        return torchvision_forward(args)
    child_env = dict(os.environ)  # before the numba kernels set their OMP_WAIT_POLICY default

    import numpy as np

    from tinymaskrcnn.fpn import resnet_fpn_backbone
    from tinymaskrcnn.kernels import available_backends, use_backend

    backends = [b for b in available_backends() if b != "cuda" or _real_gpu()]
    backends = [b for b in backends if b in (args.backends or backends)]
    size = (256, 384) if args.quick else (800, 1216)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads"
    print(f"machine: {machine}; python {platform.python_version()}, numpy {np.__version__}")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"warning: {var}={os.environ[var]} is set (slows OpenBLAS)")

    # --- 1. inference -----------------------------------------------------------------
    model, x, rng = build(args.quick)
    print(f"\n1. ResNet-50-FPN forward, 1 x 3 x {size[0]} x {size[1]}, float32")
    ours = {}
    outputs = {}
    for backend in backends:
        with use_backend(backend):
            ours[backend] = median_time(lambda: model(x), args.repeats)
            outputs[backend] = model(x)
        print(f"   tinymaskrcnn {backend:6s} median {ours[backend][0]:7.3f} s, "
              f"best {ours[backend][1]:7.3f} s")  # fmt: skip
    for backend in backends:
        with use_backend(backend):
            tracemalloc.start()
            model(x)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        print(f"   peak memory of one forward, {backend} (NumPy arrays, tracemalloc): "
              f"{peak / 2**30:.2f} GiB")  # fmt: skip
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    print(f"   process max resident size (weights, interpreter, every run): {rss:.2f} GiB")
    # The truth for accuracy: the NumPy reference in float64 on the same weights and image.
    with use_backend("numpy"):
        exact = model(x.astype(np.float64))

    # torchvision runs in a child process with its own untouched OpenMP settings (this
    # process sets OMP_WAIT_POLICY=PASSIVE for Numba, see kernels/numba_conv.py), on the
    # same seeded weights and input (rebuilt there from the same seed).
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "torchvision.npz")
        cmd = [
            sys.executable,
            __file__,
            "--torchvision-only",
            out,
            "--threads",
            str(args.threads),
            "--repeats",
            str(args.repeats),
        ] + ["--quick"] * args.quick
        done = subprocess.run(cmd, env=child_env, capture_output=True, text=True)
        if done.returncode != 0 or not os.path.exists(out):
            print(f"   torchvision not run: {done.stderr.strip().splitlines()[-1:]}")
        else:
            result = np.load(out)
            t_tv, best_tv = result["time"]
            print(f"   torchvision CPU     median {t_tv:7.3f} s, best {best_tv:7.3f} s "
                  f"(torch {result['version']}); its process max resident size "
                  f"{result['rss'] / 2**20:.2f} GiB")  # fmt: skip
            theirs = [result[f"P{i}"] for i in range(5)]
            print(f"   float32 error against our float64 reference (max |diff| / max |P| "
                  f"over P2..P6): torchvision {_error(theirs, exact):.2e}")  # fmt: skip
            for backend, (t, best) in ours.items():
                err = _error(outputs[backend], theirs)
                print(f"   ours / torchvision, {backend}: {t / t_tv:.2f}x median, "
                      f"{best / best_tv:.2f}x best (ratio torchvision / ours {t_tv / t:.2f}); "
                      f"max relative difference {err:.1e}; float32 error "
                      f"{_error(outputs[backend], exact):.2e}")  # fmt: skip

    # --- 2. training step of the shapes model's backbone --------------------------------
    small = resnet_fpn_backbone("resnet18", width=0.25, trainable_layers=5, out_channels=64,
                                norm="batch", rng=rng)  # fmt: skip
    xs = rng.standard_normal((2, 3, 128, 128)).astype(np.float32)
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in small.eval()(xs)]
    small.train()

    def step():
        small.zero_grad()
        small(xs)
        small.backward(grads)

    print("\n2. shapes backbone (ResNet-18 x 0.25 + FPN 64, batch norm) forward + backward, "
          "2 x 3 x 128 x 128")  # fmt: skip
    for backend in backends:
        with use_backend(backend):
            t, best = median_time(step, args.repeats * 2)
        print(f"   tinymaskrcnn {backend:6s} median {t * 1000:7.1f} ms, best {best * 1000:7.1f} ms")
    return 0


def _error(levels, truth):
    """Largest |levels - truth| relative to the largest |truth|, over the pyramid levels."""
    import numpy as np

    return max(
        float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())
        for a, b in zip(levels, truth, strict=True)
    )


def build(quick):
    """The seeded ResNet-50-FPN and input both processes use."""
    import numpy as np

    from tinymaskrcnn.fpn import resnet_fpn_backbone

    size = (256, 384) if quick else (800, 1216)
    rng = np.random.default_rng(0)
    model = resnet_fpn_backbone("resnet50", rng=rng).eval()
    return model, rng.standard_normal((1, 3, *size)).astype(np.float32), rng


def torchvision_forward(args):
    """Child process: time torchvision's forward, save its time and outputs to args.out."""
    import numpy as np
    import torch
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_fpn
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.set_num_threads(args.threads)
    model, x, _ = build(args.quick)
    tv = tv_fpn(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                trainable_layers=3).eval()  # fmt: skip
    tv.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    del model
    xt = torch.from_numpy(x)
    with torch.no_grad():
        t = np.array(median_time(lambda: tv(xt), args.repeats))
        outs = {f"P{i}": v.numpy() for i, v in enumerate(tv(xt).values())}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    np.savez(args.torchvision_only, time=t, version=torch.__version__, rss=rss, **outs)
    return 0


def _real_gpu() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
