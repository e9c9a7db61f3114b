"""Time the cuda backend on a real GPU against torchvision on the same GPU, in one run.

    python benchmarks/gpu.py            # the sizes of ops.py, roi_ops.py and inference.py
    python benchmarks/gpu.py --quick    # small sizes
    python benchmarks/gpu.py --quick --backend numba    # a smoke run of the script on a CPU
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu.py --tiny --no-models   # ... of the cuda paths

Every op and both whole models of the CPU benchmarks, on one NVIDIA GPU: IoU 5000 x
5000, NMS on 5000 boxes (dense at 0.5; issue #12's sparse problem at 0.7; batched per
level), RoIAlign forward and backward (1000 RoIs on (1, 256, 200, 200) -> 7 x 7, sampling
2), a 3 x 3 convolution 256 -> 256 on (1, 256, 200, 304) (an FPN output convolution on P2
of an 800 x 1216 image) forward and backward, and whole-model inference of the shapes
model (128 x 128) and of R50-FPN (800 x 1216) with identical weights (as inference.py).

Ours is timed as a user calls it: NumPy arrays in, NumPy arrays out, so every copy
between host and device is inside our time; where our kernel takes device arrays
(RoIAlign, the convolution) also "resident": the feature maps (or gradients) already on
the GPU, the result left there, the clock stopped at ``cuda.synchronize()``, as inside
the model's inference. torchvision is timed twice: "resident"
(inputs already on the GPU, the clock stops at ``torch.cuda.synchronize()``), the time
a pipeline that never leaves the GPU would see, and "host" (NumPy in, ``.cpu()`` out),
the same work as ours. Ratios are torchvision's time over ours (above 1: we are
faster). Each time is the median of ``--repeats`` runs after a warm-up (compilation,
cuDNN's algorithm search). A check column gives the largest difference of the outputs
(or whether NMS kept the same boxes), so that both did the same work.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from inference import cases  # noqa: E402  benchmarks/, beside this script
from ops import random_boxes  # noqa: E402
from roi_ops import make_problem  # noqa: E402
from timing import median_time  # noqa: E402

# Seconds of warm-up calls per contender (timing.py): shorter than the CPU scripts' second,
# because the GPU session has 15 minutes for everything (gpu_session.sh gives this script
# BENCH_LIMIT seconds) and some 30 contenders; still several calls each.
WARM_UP = 0.3


def problems(size, rng):
    """name -> (our function, torchvision function on device tensors, inputs, which of the
    inputs our kernel takes on the device: their indices, empty for none)."""
    import torch
    import torchvision

    from tinymaskrcnn.boxes import batched_nms, box_iou, nms
    from tinymaskrcnn.nn.conv import conv2d, conv2d_backward
    from tinymaskrcnn.roi_ops import roi_align, roi_align_backward

    tv = torch.ops.torchvision
    quick, tiny = size != "full", size == "tiny"  # tiny: for the simulator
    n_box = 64 if tiny else 1000 if quick else 5000
    iou_a, iou_b = random_boxes(rng, n_box), random_boxes(rng, n_box)
    dense, dense_scores = random_boxes(rng, n_box), rng.random(n_box).astype(np.float32)
    sparse = random_boxes(rng, n_box, (1000, 1000), 10.0, 200.0)
    sparse_scores = rng.random(n_box).astype(np.float32)
    levels = rng.integers(0, 5, n_box)
    n_rois, channels, side = (4, 2, 8) if tiny else (200, 16, 50) if quick else (1000, 256, 200)
    features, rois = make_problem(rng, n_rois, channels, side, 0.25)
    grad_roi = rng.normal(size=(n_rois, channels, 7, 7)).astype(np.float32)
    n, c, h, w = features.shape
    cc, ch, cw = (2, 4, 6) if tiny else (16, 40, 60) if quick else (256, 200, 304)
    x = rng.normal(size=(1, cc, ch, cw)).astype(np.float32)
    weight = (rng.normal(size=(cc, cc, 3, 3)) / np.sqrt(9 * cc)).astype(np.float32)
    bias = rng.normal(size=cc).astype(np.float32)
    grad_conv = rng.normal(size=(1, cc, ch, cw)).astype(np.float32)

    def conv_backward_tv(g, x, w):
        return torch.ops.aten.convolution_backward(
            g, x, w, [cc], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, True]
        )

    return {
        f"IoU {n_box} x {n_box}": (box_iou, torchvision.ops.box_iou, (iou_a, iou_b), ()),
        f"NMS {n_box} @ 0.5": (
            lambda b, s: nms(b, s, 0.5),
            lambda b, s: torchvision.ops.nms(b, s, 0.5),
            (dense, dense_scores),
            (),
        ),
        f"NMS {n_box} sparse @ 0.7": (
            lambda b, s: nms(b, s, 0.7),
            lambda b, s: torchvision.ops.nms(b, s, 0.7),
            (sparse, sparse_scores),
            (),
        ),
        f"batched NMS {n_box}, 5 levels": (
            lambda b, s, i: batched_nms(b, s, i, 0.7),
            lambda b, s, i: torchvision.ops.batched_nms(b, s, i, 0.7),
            (sparse, sparse_scores, levels),
            (),
        ),
        f"RoIAlign fwd {n_rois} RoIs": (
            lambda f, r: roi_align(f, r, (7, 7), 0.25, 2),
            lambda f, r: tv.roi_align(f, r, 0.25, 7, 7, 2, False),
            (features, rois),
            (0,),
        ),
        f"RoIAlign bwd {n_rois} RoIs": (
            lambda g, r: roi_align_backward(g, r, features.shape, 0.25, 2),
            lambda g, r: tv._roi_align_backward(g, r, 0.25, 7, 7, n, c, h, w, 2, False),
            (grad_roi, rois),
            (0,),
        ),
        f"conv 3x3 {cc} ch {ch}x{cw} fwd": (
            lambda x, w, b: conv2d(x, w, b, padding=1),
            lambda x, w, b: torch.nn.functional.conv2d(x, w, b, padding=1),
            (x, weight, bias),
            (0,),
        ),
        f"conv 3x3 {cc} ch {ch}x{cw} bwd": (
            lambda g, x, w: conv2d_backward(g, x, w, padding=1),
            conv_backward_tv,
            (grad_conv, x, weight),
            (0, 1),
        ),
    }


def _flat(result):
    """The arrays of a result (an array, or a tuple of them; None entries dropped)."""
    items = result if isinstance(result, (tuple, list)) else (result,)
    return [np.asarray(r.cpu() if hasattr(r, "cpu") else r) for r in items if r is not None]


def check(ours, theirs):
    """The largest absolute difference of the outputs, or 'same keep' for index lists."""
    a, b = _flat(ours), _flat(theirs)
    if a[0].dtype.kind == "i":
        same = len(a[0]) == len(b[0]) and np.array_equal(a[0], b[0])
        return "same keep" if same else f"keep differs ({len(a[0])} vs {len(b[0])})"
    return f"{max(float(np.abs(x - y).max(initial=0.0)) for x, y in zip(a, b, strict=True)):.1e}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (under the simulator)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement")
    parser.add_argument("--no-models", action="store_true", help="the ops only")
    parser.add_argument(
        "--backend", default="cuda", help="ours to time (numba: a smoke run without a GPU)"
    )
    args = parser.parse_args(argv)

    import numba
    import torch
    import torchvision
    from numba import cuda

    from tinymaskrcnn import kernels
    from tinymaskrcnn.kernels import use_backend

    gpu = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.backend != "cuda":
        name = f"none: ours on the {args.backend} backend"
    elif os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        name = "numba's CUDA simulator"
    else:
        name = cuda.get_current_device().name
    name = name.decode() if isinstance(name, bytes) else name
    print(
        f"GPU: {name}; torch on {gpu}"
        + (f" ({torch.cuda.get_device_name()})" if gpu.type == "cuda" else "")
        + f"; python {platform.python_version()}, numpy {np.__version__}, numba "
        f"{numba.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}"
    )
    print(f"times in ms, median of {args.repeats} (models: a quarter, at least 3), after a warm-up")
    print()

    def sync():
        if gpu.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, repeats=args.repeats):
        def run():
            out = fn()
            sync()
            return out

        return median_time(run, repeats, WARM_UP)[0]

    def timed_on_device(fn, inputs, resident):
        """Our time with the inputs ``resident`` already on the device (None if none)."""
        if not resident or args.backend != "cuda":
            return None
        with use_backend("cuda"):
            ready = [kernels.to_device(a) if i in resident else a for i, a in enumerate(inputs)]

            def run():
                out = fn(*ready)
                cuda.synchronize()
                return out

            return median_time(run, args.repeats, WARM_UP)[0]

    rows = []
    torch.backends.cudnn.benchmark = True
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    for label, (ours, theirs, inputs, resident) in problems(size, np.random.default_rng(0)).items():
        on_gpu = [torch.from_numpy(np.ascontiguousarray(a)).to(gpu) for a in inputs]
        with use_backend(args.backend):
            t_ours = timed(lambda o=ours, i=inputs: o(*i))
            result = ours(*inputs)
        t_ours_res = timed_on_device(ours, inputs, resident)
        t_res = timed(lambda t=theirs, g=on_gpu: t(*g))

        def host(t=theirs, i=inputs):
            out = t(*(torch.from_numpy(np.ascontiguousarray(a)).to(gpu) for a in i))
            return [o.cpu() for o in (out if isinstance(out, (tuple, list)) else (out,))]

        t_host = timed(host)
        rows.append((label, t_ours, t_ours_res, t_res, t_host, check(result, theirs(*on_gpu))))
        print(f"  {label}: done", flush=True)

    if not args.no_models:
        from torchvision_twin import load_ours, torchvision_twin

        from tinymaskrcnn.model import MaskRCNN

        model_repeats = max(3, args.repeats // 4)

        for label, (cfg, state, image) in cases(args.quick).items():
            model = MaskRCNN(cfg)
            model.load_state_dict(state)
            model.eval()
            with use_backend(args.backend):
                t_ours = timed(lambda m=model, x=image: m([x]), model_repeats)
                (det,) = model([image])
            twin = torchvision_twin(cfg)
            load_ours(twin, state)
            twin.eval().to(gpu)
            x_gpu = torch.from_numpy(image).to(gpu)
            with torch.no_grad():
                t_res = timed(lambda tw=twin, x=x_gpu: tw([x]), model_repeats)

                def host(tw=twin, x=image):
                    (out,) = tw([torch.from_numpy(x).to(gpu)])
                    return {k: v.cpu() for k, v in out.items()}

                t_host = timed(host, model_repeats)
                tv_det = host()
            counts = f"{len(det['boxes'])} vs {len(tv_det['boxes'])} detections"
            rows.append((f"model {label}", t_ours, None, t_res, t_host, counts))
            print(f"  model {label}: done", flush=True)
            del model, twin

    header = ("work", "ours", "ours resident", "tv resident", "tv host", "tv host/ours",
              "tv res/ours res", "check")  # fmt: skip
    table = [header] + [
        (label, f"{a * 1e3:.2f}", "-" if r is None else f"{r * 1e3:.2f}", f"{b * 1e3:.2f}",
         f"{c * 1e3:.2f}", f"{c / a:.2f}x", "-" if r is None else f"{b / r:.2f}x", note)
        for label, a, r, b, c, note in rows
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print()
    for r in table:
        print("  ".join(cell.rjust(wd) for cell, wd in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
