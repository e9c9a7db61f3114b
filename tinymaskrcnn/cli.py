"""The ``tinymaskrcnn`` command line (design §9).

    tinymaskrcnn tour [--out DIR] [--backend NAME|all] [--seed N] [--image-size PX]
    tinymaskrcnn train [--config shapes] [--steps N] [--out RUN] [--resume] [--set F=V] ...
    tinymaskrcnn predict IMAGE [--out PNG] [--checkpoint FILE] [--score-thresh S]
    tinymaskrcnn evaluate [--checkpoint FILE] [--coco JSON] [--num-images N] [--seed N]
    tinymaskrcnn bench [--backend NAME|all] [--quick]
    tinymaskrcnn convert-torchvision IN.pth OUT.safetensors

``train``, ``predict`` and ``evaluate`` run the training loop (train.py), one image
through a model (by default the shapes model shipped in the package) and COCO AP
(evaluate.py); ``bench`` times the hot ops and a model step on each backend.

``tour`` runs the stages built so far on one synthetic shapes image — anchors, IoU
matching, box decoding and NMS — prints what each produced and how long it took on each
backend, and writes a figure per stage to ``--out``. Until the RPN is trained, the
objectness and deltas fed to decoding come from a mock RPN: deltas that point at the
nearest object with some noise, scores that follow how well the decoded box fits.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

from .kernels import BACKENDS, available_backends, use_backend

_STRIDES = (4, 8, 16, 32, 64)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="tinymaskrcnn",
        description="Mask R-CNN from scratch in NumPy, with Numba kernels.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    _add_tour(commands)
    for add in (_add_train, _add_predict, _add_evaluate, _add_bench, _add_convert):
        add(commands)
    args = parser.parse_args(argv)
    return args.run(args)


# --- tour ---------------------------------------------------------------------------


def _add_tour(commands):
    tour = commands.add_parser(
        "tour",
        help="run every stage built so far on a synthetic image; print timings, write figures",
        description="Run the stages built so far on one synthetic shapes image: print what "
        "each produced and how long it took on each backend, and write a figure per stage.",
    )
    tour.add_argument(
        "--out", default="tour", type=pathlib.Path, help="folder for the figures (default: tour/)"
    )
    tour.add_argument(
        "--backend",
        default="all",
        choices=("all",) + BACKENDS,
        help="backend to time; 'all' (default) times every one available "
        "(cuda only on a real GPU, not under the simulator)",
    )
    tour.add_argument(
        "--seed", default=0, type=int, help="seed of the shapes image and the mock RPN (default: 0)"
    )
    tour.add_argument(
        "--image-size",
        default=256,
        type=int,
        help="side of the square image in pixels, at least 64 (default: 256)",
    )
    tour.set_defaults(run=_run_tour)


def _tour_backends(choice):
    available = available_backends()
    if choice != "all":
        if choice not in available:
            sys.exit(
                f"tinymaskrcnn tour: backend {choice!r} is not available here "
                f"(available: {', '.join(available)})"
            )
        return [choice]
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    return [b for b in available if not (b == "cuda" and simulated)]


def _timed(fn, backend, repeats=3):
    """(result, best seconds) of ``fn`` under ``backend``, after one warm-up (compilation)."""
    with use_backend(backend):
        result = fn()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
    return result, best


def _mock_rpn(gt, anchors, rng):
    """Objectness (M,) and deltas (M, 4) of a half-trained RPN, made from the ground truth."""
    from .boxes import BoxCoder, box_iou, clip_boxes

    iou = box_iou(gt, anchors)
    best = iou.argmax(axis=0)
    coder = BoxCoder()
    deltas = coder.encode(gt[best], anchors) + rng.normal(0, 0.12, anchors.shape)
    size = float(anchors[:, 2:].max())  # only used to keep the fit measure in the image
    decoded = clip_boxes(coder.decode(deltas, anchors), (size, size))
    fit = box_iou(decoded, gt)[np.arange(len(anchors)), best]
    objectness = np.clip(0.9 * fit + rng.normal(0, 0.05, len(anchors)), 0, 1)
    return objectness.astype(np.float32), deltas.astype(np.float32)


def _run_tour(args) -> int:
    from . import viz
    from .anchors import AnchorGenerator
    from .boxes import BoxCoder, box_iou, clip_boxes, nms
    from .data.shapes import ShapesDataset
    from .matching import Matcher

    if args.image_size < 64:
        sys.exit(f"tinymaskrcnn tour: --image-size must be at least 64; got {args.image_size}")
    backends = _tour_backends(args.backend)
    out = args.out
    size = args.image_size
    rng = np.random.default_rng(args.seed)
    image, target = ShapesDataset(1, image_size=size, seed=args.seed)[0]
    gt = target["boxes"]
    print(
        f"tinymaskrcnn tour: one {size}x{size} shapes image (seed {args.seed}) with "
        f"{len(gt)} objects; backends timed: {', '.join(backends)}; figures -> {out}/"
    )

    def report(stage, what, seconds):
        times = "  ".join(f"{b} {seconds[b] * 1e3:8.2f} ms" for b in backends)
        print(f"\n[{stage}] {what}\n    {times}")

    # 1. anchors (no kernel: the same NumPy code on every backend)
    generator = AnchorGenerator()
    feature_sizes = [(size // s, size // s) for s in _STRIDES]
    start = time.perf_counter()
    levels = generator.generate((size, size), feature_sizes)
    seconds = time.perf_counter() - start
    anchors = np.concatenate(levels)
    counts = ", ".join(f"P{k + 2} {len(a)}" for k, a in enumerate(levels))
    print(f"\n[anchors] {len(anchors):,} anchors ({counts})\n    reference {seconds * 1e3:.2f} ms")
    strides = generator.strides((size, size), feature_sizes)
    fig = viz.plot_anchor_tiling(image, levels, strides, location=(size // 2, size // 2))
    viz.save(fig, out / "01_anchors.png")

    # 2. matching: IoU of every gt with every anchor, then 0.7 / 0.3 with low-quality matches
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    results, seconds = {}, {}
    for b in backends:
        results[b], seconds[b] = _timed(lambda: matcher(box_iou(gt, anchors)), b)
    matches = results[backends[0]]
    agree = all(np.array_equal(results[b], matches) for b in backends)
    report(
        "matching",
        f"IoU {len(gt)} x {len(anchors):,} + Matcher: {(matches >= 0).sum()} positive, "
        f"{(matches == -2).sum()} ignored, {(matches == -1).sum():,} negative"
        f"{'' if agree else '  (backends DISAGREE)'}",
        seconds,
    )
    fig = viz.plot_anchor_labels(
        image, gt, anchors, matches, "Anchor labels at 0.7 / 0.3", rng=np.random.default_rng(0)
    )
    viz.save(fig, out / "02_matching.png")

    # 3. decode every anchor's deltas, clip, keep the top 1000, NMS at 0.7
    objectness, deltas = _mock_rpn(gt, anchors, rng)
    coder = BoxCoder()
    top = np.argsort(-objectness, kind="stable")[:1000]

    def proposals():
        boxes = clip_boxes(coder.decode(deltas, anchors)[top], (size, size))
        return boxes, nms(boxes, objectness[top], 0.7)

    results, seconds = {}, {}
    for b in backends:
        results[b], seconds[b] = _timed(proposals, b)
    boxes, keep = results[backends[0]]
    agree = all(np.array_equal(results[b][1], keep) for b in backends)
    report(
        "proposals",
        f"decode {len(anchors):,} anchors, top {len(top)}, NMS at 0.7 keeps {len(keep)}"
        f"{'' if agree else '  (backends DISAGREE)'}",
        seconds,
    )
    fig = viz.plot_nms(image, boxes[:150], objectness[top][:150], keep[keep < 150], 0.7, gt)
    viz.save(fig, out / "03_proposals.png")
    print(f"\nfigures: {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}/")
    return 0


# --- train, predict, evaluate, bench, convert-torchvision ---------------------------


def _add_train(commands):
    from .train import TrainSettings

    d = TrainSettings()
    p = commands.add_parser(
        "train",
        help="train a Mask R-CNN (by default the shapes model) with checkpoints and resume",
        description="Train with SGD (momentum, weight decay, warm-up, step schedule) into a run "
        "folder: checkpoint.safetensors (full state, for --resume), model.safetensors (weights), "
        "log.csv (losses per step) and eval.csv (COCO AP on held-out images). Ctrl-C leaves the "
        "last checkpoint intact; --resume continues from it bit for bit.",
    )
    p.add_argument(
        "--config",
        default="shapes",
        choices=("shapes", "torchvision_resnet50_fpn"),
        help="model preset (default: shapes)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a MaskRCNNConfig field, e.g. --set roi_op=pool "
        "--set mask_loss=softmax (VALUE is read as JSON, else as a string); repeatable",
    )
    p.add_argument(
        "--out",
        default=pathlib.Path("runs/shapes"),
        type=pathlib.Path,
        help="run folder (default: runs/shapes)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint up to --steps",
    )
    p.add_argument("--steps", default=d.steps, type=int, help=f"total steps (default: {d.steps})")
    p.add_argument(
        "--batch-size",
        default=d.batch_size,
        type=int,
        help=f"images per step (default: {d.batch_size})",
    )
    p.add_argument(
        "--lr", default=d.lr, type=float, help=f"learning rate after warm-up (default: {d.lr})"
    )
    p.add_argument(
        "--warmup",
        default=d.warmup_iters,
        type=int,
        help=f"warm-up steps (default: {d.warmup_iters})",
    )
    p.add_argument(
        "--milestones",
        default=None,
        type=int,
        nargs="*",
        help="steps at which the rate drops 10x (default: one at 80%% of --steps)",
    )
    p.add_argument(
        "--weight-decay",
        default=d.weight_decay,
        type=float,
        help=f"SGD weight decay (default: {d.weight_decay})",
    )
    p.add_argument(
        "--seed",
        default=d.seed,
        type=int,
        help=f"seed of the weights, samplers and batch order (default: {d.seed})",
    )
    p.add_argument(
        "--train-images",
        default=d.train_images,
        type=int,
        help=f"size of the shapes training set (default: {d.train_images})",
    )
    p.add_argument(
        "--coco",
        default=None,
        type=pathlib.Path,
        metavar="JSON",
        help="train on a COCO-format annotation file instead of shapes",
    )
    p.add_argument(
        "--images",
        default=None,
        type=pathlib.Path,
        metavar="DIR",
        help="image folder of --coco (default: images/ beside the json)",
    )
    p.add_argument(
        "--checkpoint-every",
        default=d.checkpoint_every,
        type=int,
        help=f"steps between checkpoints (default: {d.checkpoint_every})",
    )
    p.add_argument(
        "--eval-every",
        default=d.eval_every,
        type=int,
        help="steps between evaluations on held-out shapes (default: 0, only at the end)",
    )
    p.add_argument(
        "--eval-images",
        default=d.eval_images,
        type=int,
        help=f"held-out shapes images, 0 for none (default: {d.eval_images})",
    )
    p.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="backend (default: the fastest available, numba when installed)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_train)


def _parse_overrides(items, command):
    import json

    overrides = {}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep or not field:
            sys.exit(f"tinymaskrcnn {command}: --set needs FIELD=VALUE; got {item!r}")
        try:
            overrides[field] = json.loads(text)
        except json.JSONDecodeError:
            overrides[field] = text
    return overrides


def _run_train(args) -> int:
    from .config import MaskRCNNConfig
    from .evaluate import format_table
    from .train import TrainSettings, train

    try:
        cfg = getattr(MaskRCNNConfig, args.config)(**_parse_overrides(args.set, "train"))
        settings = TrainSettings(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_iters=args.warmup,
            milestones=args.milestones,
            weight_decay=args.weight_decay,
            seed=args.seed,
            train_images=args.train_images,
            checkpoint_every=args.checkpoint_every,
            eval_every=args.eval_every,
            eval_images=args.eval_images,
        )
        dataset = eval_dataset = None
        if args.coco is not None:
            from .data.coco import CocoDataset

            dataset, eval_dataset = CocoDataset(args.coco, args.images), False
        result = train(
            cfg,
            args.out,
            settings,
            resume=args.resume,
            dataset=dataset,
            eval_dataset=eval_dataset,
            backend=args.backend,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        sys.exit(f"tinymaskrcnn train: {err}")
    if result.interrupted:
        print(
            f"\ninterrupted at step {result.step}; {args.out}/checkpoint.safetensors holds the "
            f"last checkpoint: continue with --resume --out {args.out}"
        )
        return 130
    print(
        f"trained to step {result.step} in {result.seconds:.0f} s -> {args.out}/model.safetensors"
    )
    if result.metrics is not None:
        print(format_table(result.metrics))
    return 0


def _add_model_options(p):
    p.add_argument(
        "--checkpoint",
        default=None,
        type=pathlib.Path,
        help="model.safetensors or checkpoint.safetensors of a run "
        "(default: the shapes model shipped in the package)",
    )
    p.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="backend (default: the fastest available, numba when installed)",
    )


def _load_model(args, command):
    from .model import MaskRCNN
    from .train import load_model

    try:
        if args.checkpoint is None:
            return MaskRCNN.from_pretrained("shapes")
        return load_model(args.checkpoint)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"tinymaskrcnn {command}: {err}")


def _class_names(model):
    from .data.shapes import ShapesDataset

    if model.cfg.num_classes == len(ShapesDataset.CLASSES):
        return ShapesDataset.CLASSES
    return tuple(f"class {k}" for k in range(model.cfg.num_classes))


def _add_predict(commands):
    p = commands.add_parser(
        "predict",
        help="detect objects in an image; draw boxes, labels and masks",
        description="Run a model on one image (PNG, JPEG, anything Pillow reads), print its "
        "detections and draw them (boxes, class names, scores, masks) to --out.",
    )
    p.add_argument("image", type=pathlib.Path, help="the image file")
    p.add_argument(
        "--out",
        default=None,
        type=pathlib.Path,
        help="where to draw the detections (default: IMAGE_detections.png)",
    )
    p.add_argument(
        "--score-thresh",
        default=0.5,
        type=float,
        help="draw and print detections scoring at least this (default: 0.5)",
    )
    _add_model_options(p)
    p.set_defaults(run=_run_predict)


def read_image(path):
    """(3, H, W) float32 RGB in [0, 1] from an image file; errors name the file."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path!r} does not exist")
    try:
        with Image.open(path) as pil:
            pil.load()
            rgb = np.asarray(pil.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"image {path!r} does not decode as an image: {err}") from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), np.float32) / np.float32(255)


def _run_predict(args) -> int:
    from . import viz
    from .train import default_backend

    try:
        image = read_image(args.image)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"tinymaskrcnn predict: {err}")
    model = _load_model(args, "predict")
    names = _class_names(model)
    start = time.perf_counter()
    with use_backend(args.backend or default_backend()):
        detections = model([image])[0]
    seconds = time.perf_counter() - start
    keep = np.flatnonzero(detections["scores"] >= args.score_thresh)
    print(
        f"{args.image}: {len(keep)} detections with score >= {args.score_thresh:g} "
        f"({seconds:.2f} s)"
    )
    for i in keep:
        x1, y1, x2, y2 = detections["boxes"][i]
        area = int((detections["masks"][i, 0] > 0.5).sum())
        print(
            f"  {names[detections['labels'][i]]:>10s} {detections['scores'][i]:.3f}  "
            f"box [{x1:6.1f} {y1:6.1f} {x2:6.1f} {y2:6.1f}]  mask {area} px"
        )
    out = args.out or args.image.with_name(args.image.stem + "_detections.png")
    fig = viz.plot_detections(
        image,
        detections,
        names,
        args.score_thresh,
        title=f"{args.image.name}: {len(keep)} detections",
    )
    viz.save(fig, out)
    print(f"drawn to {out}")
    return 0


def _add_evaluate(commands):
    p = commands.add_parser(
        "evaluate",
        help="COCO box and mask AP of a model on held-out shapes or a COCO json",
        description="Score a model with pycocotools' COCOeval (bbox and segm AP, AP50, AP75 "
        "and AP per class) on freshly drawn shapes images or on a COCO-format dataset.",
    )
    p.add_argument(
        "--coco",
        default=None,
        type=pathlib.Path,
        metavar="JSON",
        help="a COCO-format annotation file (default: shapes images)",
    )
    p.add_argument(
        "--images",
        default=None,
        type=pathlib.Path,
        metavar="DIR",
        help="image folder of --coco (default: images/ beside the json)",
    )
    p.add_argument(
        "--num-images", default=200, type=int, help="shapes images to draw (default: 200)"
    )
    p.add_argument(
        "--seed",
        default=12345,
        type=int,
        help="seed of the shapes images (default: 12345, the held-out set; training uses seed 1)",
    )
    _add_model_options(p)
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from .evaluate import format_table
    from .train import default_backend, evaluate_model

    model = _load_model(args, "evaluate")
    try:
        if args.coco is not None:
            from .data.coco import CocoDataset

            dataset = CocoDataset(args.coco, args.images)
            what = f"{len(dataset)} images of {args.coco}"
        else:
            from .data.shapes import ShapesDataset

            dataset = ShapesDataset(args.num_images, image_size=model.cfg.min_size, seed=args.seed)
            what = f"{len(dataset)} shapes images (seed {args.seed})"
        start = time.perf_counter()
        with use_backend(args.backend or default_backend()):
            results = evaluate_model(model, dataset)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"tinymaskrcnn evaluate: {err}")
    print(f"{what}, {time.perf_counter() - start:.1f} s\n{format_table(results)}")
    return 0


def _add_bench(commands):
    p = commands.add_parser(
        "bench",
        help="time the hot ops and a model step on each backend",
        description="Time IoU, NMS, RoIAlign forward and backward, a 3x3 convolution and the "
        "shapes model's inference and training step on each available backend (the median of "
        "--repeats runs after a warm-up, so Numba's compilation is excluded). benchmarks/ has "
        "the full-size scripts with torchvision for comparison.",
    )
    p.add_argument(
        "--backend",
        default="all",
        choices=("all",) + BACKENDS,
        help="backend to time; 'all' (default) times every one available (cuda only on a real GPU)",
    )
    p.add_argument("--repeats", default=3, type=int, help="timed runs per op (default: 3)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.set_defaults(run=_run_bench)


def _bench_cases(quick):
    from .boxes import box_iou, nms
    from .config import MaskRCNNConfig
    from .data.shapes import ShapesDataset
    from .model import MaskRCNN
    from .nn.conv import conv2d
    from .roi_ops import roi_align, roi_align_backward

    rng = np.random.default_rng(0)
    n = 500 if quick else 2000
    xy = rng.uniform(0, 700, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(16, 200, (n, 2))], axis=1).astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    side = 50 if quick else 100
    features = rng.standard_normal((1, 64, side, side)).astype(np.float32)
    k = 100 if quick else 500
    corner = rng.uniform(0, 4 * side - 64, (k, 2))
    rois = np.concatenate(
        [np.zeros((k, 1)), corner, corner + rng.uniform(16, 64, (k, 2))], axis=1
    ).astype(np.float32)
    grad = rng.standard_normal((k, 64, 7, 7)).astype(np.float32)
    x = rng.standard_normal((4, 32, side, side)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    cfg = MaskRCNNConfig.shapes()
    model = MaskRCNN(cfg, rng=np.random.default_rng(0))
    shapes = ShapesDataset(4, seed=1)
    images = [shapes[i][0] for i in range(4)]
    targets = [shapes[i][1] for i in range(4)]

    def inference():
        model.eval()
        return model(images)

    def train_step():
        model.train()
        model(images, targets)
        model.backward()
        model.zero_grad()

    return [
        (f"box_iou {n} x {n}", lambda: box_iou(boxes, boxes)),
        (f"nms {n} boxes", lambda: nms(boxes, scores, 0.7)),
        (
            f"roi_align {k} RoIs, (1,64,{side},{side}) -> 7x7",
            lambda: roi_align(features, rois, 7, 0.25, 2),
        ),
        (
            f"roi_align_backward {k} RoIs",
            lambda: roi_align_backward(grad, rois, features.shape, 0.25, 2),
        ),
        (f"conv2d 3x3 (4,32,{side},{side})", lambda: conv2d(x, w, padding=1)),
        ("shapes model inference, 4 images 128x128", inference),
        ("shapes model training step, 4 images", train_step),
    ]


def _run_bench(args) -> int:
    backends = _tour_backends(args.backend)
    cases = _bench_cases(args.quick)
    width = max(len(name) for name, _ in cases)
    print(f"{'':{width}s}  " + "  ".join(f"{b:>10s}" for b in backends) + "   (median ms)")
    for name, fn in cases:
        times = []
        for b in backends:
            with use_backend(b):
                fn()
                runs = []
                for _ in range(max(1, args.repeats)):
                    start = time.perf_counter()
                    fn()
                    runs.append(time.perf_counter() - start)
            times.append(float(np.median(runs)))
        ratio = (
            f"   numpy/numba {times[0] / times[1]:5.1f}x"
            if backends[:2] == ["numpy", "numba"]
            else ""
        )
        print(f"{name:{width}s}  " + "  ".join(f"{t * 1e3:10.1f}" for t in times) + ratio)
    return 0


def _add_convert(commands):
    p = commands.add_parser(
        "convert-torchvision",
        help="convert a torchvision Mask R-CNN .pth into a safetensors checkpoint (needs torch)",
        description="Read a torchvision Mask R-CNN state_dict (.pth, either key generation) "
        "and write it as a tinymaskrcnn checkpoint with torchvision's ResNet-50-FPN config. "
        "Needs torch (pip install torch); nothing else in tinymaskrcnn does.",
    )
    p.add_argument("input", type=pathlib.Path, help="the .pth file")
    p.add_argument("output", type=pathlib.Path, help="the .safetensors file to write")
    p.set_defaults(run=_run_convert)


def _run_convert(args) -> int:
    from .weights import convert_torchvision

    if not args.input.is_file():
        sys.exit(f"tinymaskrcnn convert-torchvision: {args.input} does not exist")
    try:
        path = convert_torchvision(args.input, args.output)
    except (ValueError, RuntimeError) as err:
        sys.exit(f"tinymaskrcnn convert-torchvision: {err}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
