"""What each ``tinymaskrcnn`` command does, given its parsed arguments (cli.py parses).

Each ``run_*`` takes the argparse namespace of its command, prints its report and
returns the exit status; a user's mistake ends the program with a one-line message
naming the command (``fail``), never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np

from .kernels import use_backend


def fail(command, err):
    """Exit with ``tinymaskrcnn COMMAND: what went wrong`` (status 1, argparse's is 2)."""
    sys.exit(f"tinymaskrcnn {command}: {err}")


def describe_os_error(err: OSError) -> str:
    """``[Errno 28] No space left on device: 'x'`` as ``No space left on device: x``; an
    error raised with its own message (weights.py, atomic_file.py) keeps it."""
    if err.strerror is None:
        return str(err)
    names = [os.fspath(n) for n in (err.filename, err.filename2) if n is not None]
    return err.strerror + (f": {' -> '.join(names)}" if names else "")


def run_tour(args) -> int:
    import matplotlib

    matplotlib.use("Agg")  # the tour only writes files: no window, no display needed
    from . import tour
    from .data.shapes import ShapesDataset
    from .model import MaskRCNN

    if args.image is not None:
        return _run_photo_tour(args)
    if args.checkpoint is not None:
        fail(
            "tour",
            "--checkpoint needs --image PHOTO (without one the tour runs the shipped shapes "
            "model on shapes images)",
        )
    if args.image_size < 64:
        fail("tour", f"--image-size must be at least 64; got {args.image_size}")
    if args.seed < 0:
        fail("tour", f"--seed must be a non-negative int; got {args.seed}")
    repeats = _repeats(args, tour.REPEATS)
    try:
        backends = tour.tour_backends(args.backend)
        model = MaskRCNN.from_pretrained("shapes")
    except FileNotFoundError as err:
        fail(
            "tour",
            f"the shipped shapes model cannot be loaded ({err}). Train one with "
            "`tinymaskrcnn train --out runs/shapes` and copy runs/shapes/model.safetensors "
            "to tinymaskrcnn/pretrained/shapes.safetensors",
        )
    except ValueError as err:
        fail("tour", err)
    dataset = ShapesDataset(tour.TOUR_IMAGES, image_size=args.image_size, seed=args.seed)
    print(
        f"tinymaskrcnn tour: the shipped shapes model on {args.image_size}x{args.image_size} "
        f"shapes images (seed {args.seed}); image 0 holds {len(dataset[0][1]['boxes'])} "
        "objects.\nThe model runs once per backend to warm up (Numba compiles, then caches "
        f"on disk), then the best of {repeats} runs of each stage is shown.\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    tour.run_tour(model, dataset, backends, args.out, repeats=repeats)
    return 0


def _repeats(args, default):
    if args.repeats is None:
        return default
    if args.repeats < 1:
        fail("tour", f"--repeats must be at least 1; got {args.repeats}")
    return args.repeats


def _run_photo_tour(args) -> int:
    from . import tour
    from .data.images import read_image
    from .photo_tour import run_photo_tour

    repeats = _repeats(args, 1)
    try:
        image = read_image(args.image)
        backends = tour.tour_backends(args.backend)
    except (ValueError, FileNotFoundError) as err:
        fail("tour", err)
    model = load_model(args, "tour")
    what = "the shipped shapes model" if args.checkpoint is None else str(args.checkpoint)
    cfg = model.cfg
    print(
        f"tinymaskrcnn tour: {what} ({cfg.backbone}, {cfg.num_classes} classes) on "
        f"{args.image} ({image.shape[2]}x{image.shape[1]}).\nThe model runs once per backend "
        f"to warm up (Numba compiles, then caches on disk), then the best of {repeats} "
        f"run{'s' if repeats > 1 else ''} of each stage is shown (--repeats).\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    run_photo_tour(model, image, args.image.name, backends, args.out, repeats=repeats)
    return 0


def run_bench(args) -> int:
    from . import tour

    try:
        tour.run_bench(tour.tour_backends(args.backend), max(1, args.repeats), args.quick)
    except ValueError as err:
        fail("bench", err)
    return 0


def run_train(args) -> int:
    from .config import MaskRCNNConfig
    from .distributed import WorkerLost  # imports Ray only when workers start
    from .evaluate import format_table
    from .train import TrainSettings, train

    overrides = {}
    for item in args.set:
        name, sep, text = item.partition("=")
        if not sep or not name:
            fail("train", f"--set needs FIELD=VALUE; got {item!r}")
        try:
            overrides[name] = json.loads(text)
        except json.JSONDecodeError:
            overrides[name] = text
    try:
        cfg = getattr(MaskRCNNConfig, args.config)(**overrides)
        fields = [f.name for f in dataclasses.fields(TrainSettings)]
        settings = TrainSettings(**{name: getattr(args, name) for name in fields})
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
            address=args.address,
        )
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError, WorkerLost) as err:
        fail("train", err)
    if result.interrupted:
        print(
            f"\ninterrupted at step {result.step}; {args.out}/checkpoint.safetensors holds "
            f"the last checkpoint: continue with --resume --out {args.out}"
        )
        return 130
    print(
        f"trained to step {result.step} in {result.seconds:.0f} s -> {args.out}/model.safetensors"
    )
    if result.metrics is not None:
        print(format_table(result.metrics))
    return 0


def load_model(args, command):
    from .model import MaskRCNN

    try:
        if args.checkpoint is None:
            return MaskRCNN.from_pretrained("shapes")
        return MaskRCNN.from_checkpoint(args.checkpoint)
    except (ValueError, FileNotFoundError) as err:
        fail(command, err)


def run_predict(args) -> int:
    import matplotlib

    matplotlib.use("Agg")  # predict only writes its figure to a file
    from .data.images import read_image
    from .plotting import save
    from .plotting.detections import plot_detections
    from .train import default_backend

    if not 0 <= args.score_thresh <= 1:
        fail("predict", f"--score-thresh must be a score in [0, 1]; got {args.score_thresh}")
    try:
        image = read_image(args.image)
    except (ValueError, FileNotFoundError) as err:
        fail("predict", err)
    model = load_model(args, "predict")
    names = model.class_names
    start = time.perf_counter()
    with use_backend(args.backend or default_backend()):
        det = model([image])[0]
    keep = np.flatnonzero(det["scores"] >= args.score_thresh)
    print(
        f"{args.image}: {len(keep)} detections with score >= {args.score_thresh:g} "
        f"({time.perf_counter() - start:.2f} s)"
    )
    for i in keep:
        box = " ".join(f"{v:6.1f}" for v in det["boxes"][i])
        print(
            f"  {names[det['labels'][i]]:>10s} {det['scores'][i]:.3f}  box [{box}]  "
            f"mask {int((det['masks'][i, 0] > 0.5).sum())} px"
        )
    out = args.out or args.image.with_name(args.image.stem + "_detections.png")
    title = f"{args.image.name}: {len(keep)} detections"
    save(plot_detections(image, det, names, args.score_thresh, title=title), out)
    print(f"drawn to {out}")
    return 0


def run_evaluate(args) -> int:
    from .evaluate import format_table
    from .train import default_backend, evaluate_model

    model = load_model(args, "evaluate")
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
        fail("evaluate", err)
    print(f"{what}, {time.perf_counter() - start:.1f} s\n{format_table(results)}")
    return 0


def run_convert(args) -> int:
    from .model import MaskRCNN
    from .weights import convert_torchvision

    if not args.input.is_file():
        what = "is a folder, not a .pth file" if args.input.is_dir() else "does not exist"
        fail("convert-torchvision", f"{args.input} {what}")
    try:
        expected = lambda cfg: MaskRCNN(cfg).state_dict()  # the names and shapes to fit
        print(f"wrote {convert_torchvision(args.input, args.output, expected=expected)}")
    except (ValueError, RuntimeError) as err:
        fail("convert-torchvision", err)
    return 0


def run_export(args) -> int:
    from .weights import export_torchvision

    try:
        print(f"wrote {export_torchvision(args.checkpoint, args.output)}")
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        fail("export-torchvision", err)
    return 0


def run_check(args) -> int:
    from .roi_check import check

    return check(args.case, args.layout, args.boxes, args.save_figure)
