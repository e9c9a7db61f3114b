"""The ``tinymaskrcnn`` command line (docs/architecture.md, Command line).

    tinymaskrcnn tour [--out DIR] [--backend NAME|all] [--seed N] [--image-size PX]
    tinymaskrcnn train [--config shapes] [--steps N] [--out RUN] [--resume] [--set F=V] ...
    tinymaskrcnn predict IMAGE [--out PNG] [--checkpoint FILE] [--score-thresh S]
    tinymaskrcnn evaluate [--checkpoint FILE] [--coco JSON] [--num-images N] [--seed N]
    tinymaskrcnn bench [--backend NAME|all] [--quick]
    tinymaskrcnn convert-torchvision IN.pth OUT.safetensors
    tinymaskrcnn check CASE.npz [--layout L] [--boxes xyxy|normalized-yxyx] [--save-figure PNG]

``train``, ``predict`` and ``evaluate`` run the training loop (train.py), one image
through a model (by default the shapes model shipped in the package) and COCO AP
(evaluate.py); ``bench`` times the hot ops and a model step on each backend.

``tour`` is the first thing to run: it draws synthetic shapes images and runs the
shapes model shipped in the package on them one stage at a time — transform, backbone +
FPN, anchors, anchor matching, RPN head, proposals (decode, clip, NMS), RoI heads, mask
pasting — printing what each stage produced and how long it took on each backend, and
writing a figure per stage to ``--out``: anchors, anchor matches at 0.7 / 0.3, the RPN's
proposals before and after NMS, RoIPool's bins vs RoIAlign's samples on a detected
object, and the detections with their masks.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

from .kernels import BACKENDS, available_backends, use_backend


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="tinymaskrcnn",
        description="Mask R-CNN from scratch in NumPy, with Numba kernels.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    _add_tour(commands)
    for add in (_add_train, _add_predict, _add_evaluate, _add_bench, _add_convert, _add_check):
        add(commands)
    args = parser.parse_args(argv)
    return args.run(args)


# --- tour ---------------------------------------------------------------------------


def _add_tour(commands):
    tour = commands.add_parser(
        "tour",
        help="run the shipped shapes model stage by stage; print timings, write figures",
        description="Draw synthetic shapes images and run the shapes model shipped in the "
        "package on them one stage at a time (transform, backbone + FPN, anchors, matching, "
        "RPN, proposals + NMS, RoI heads, masks): print what each stage produced and how long "
        "it took on each backend, and write a figure per stage (anchors, anchor matches, "
        "proposals before/after NMS, RoIPool vs RoIAlign on a detected object, detections "
        "with masks).",
    )
    tour.add_argument(
        "--out",
        default="tour",
        type=pathlib.Path,
        metavar="DIR",
        help="folder for the figures (default: tour/)",
    )
    tour.add_argument(
        "--backend",
        default="all",
        choices=("all",) + BACKENDS,
        metavar="{all," + ",".join(BACKENDS) + "}",
        help="backend to time; 'all' (default) times every one available "
        "(cuda only on a real GPU, not under the simulator)",
    )
    tour.add_argument(
        "--seed", default=0, type=int, metavar="N", help="seed of the shapes images (default: 0)"
    )
    tour.add_argument(
        "--image-size",
        default=128,
        type=int,
        metavar="PX",
        help="side of the square shapes images in pixels, at least 64; the model resizes "
        "them to its 128-pixel input (default: 128)",
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


_TOUR_IMAGES = 4  # images in the detections figure; the stages run on the first


def _run_tour(args) -> int:
    import matplotlib

    matplotlib.use("Agg")  # the tour only writes files: no window, no display needed

    from .boxes import batched_nms, box_iou
    from .data.shapes import ShapesDataset
    from .matching import Matcher
    from .model import MaskRCNN
    from .plotting import save
    from .plotting.anchors import plot_anchor_tiling
    from .plotting.detections import plot_detection_rows
    from .plotting.matching import plot_anchor_labels
    from .plotting.rpn import plot_proposals_nms
    from .rpn import flatten_predictions, proposal_candidates, select_proposals
    from .transform import resize_bilinear

    if args.image_size < 64:
        sys.exit(f"tinymaskrcnn tour: --image-size must be at least 64; got {args.image_size}")
    if args.seed < 0:
        sys.exit(f"tinymaskrcnn tour: --seed must be a non-negative int; got {args.seed}")
    try:
        model = MaskRCNN.from_pretrained("shapes")
    except (FileNotFoundError, ValueError) as err:
        sys.exit(
            f"tinymaskrcnn tour: the shipped shapes model cannot be loaded ({err}). Train one "
            "with `tinymaskrcnn train --out runs/shapes` and copy runs/shapes/model.safetensors "
            "to tinymaskrcnn/pretrained/shapes.safetensors"
        )
    cfg = model.cfg
    backends = _tour_backends(args.backend)
    out = args.out
    dataset = ShapesDataset(_TOUR_IMAGES, image_size=args.image_size, seed=args.seed)
    image, target = dataset[0]
    dtype = model.backbone.body.conv1.weight.data.dtype
    x = image.astype(dtype)
    print(
        f"tinymaskrcnn tour: the shipped shapes model on {args.image_size}x{args.image_size} "
        f"shapes images (seed {args.seed}); image 0 holds {len(target['boxes'])} objects.\n"
        f"Each stage runs once per backend to warm up (Numba compiles, then caches on disk), "
        f"then the best of 3 runs is shown.\n"
    )
    width = 12 * len(backends)
    print(f"{'stage':<13s}" + "".join(f"{b + ' ms':>12s}" for b in backends) + "   what it made")
    print("-" * (13 + width + 50))

    def stage(name, fn, what, seconds=None, agree=None):
        """Run ``fn`` on every backend (or take given ``seconds``), print a table row.

        agree(a, b) -> bool compares two backends' results; a mismatch is flagged.
        """
        if seconds is None:
            results, seconds = {}, {}
            for b in backends:
                results[b], seconds[b] = _timed(fn, b)
            result = results[backends[0]]
            if agree is not None and not all(agree(result, results[b]) for b in backends):
                what = what(result) + "  (backends DISAGREE)"
        else:
            result = fn()
        cells = "".join(
            f"{seconds[b] * 1e3:12.1f}" if b in seconds else f"{'same':>12s}" for b in backends
        )
        print(f"{name:<13s}{cells}   {what(result) if callable(what) else what}")
        return result

    # 1. transform: normalise, resize to the model's input, pad to a multiple of 32
    batch, image_sizes, resized_targets = stage(
        "transform",
        lambda: model.transform([x], [target]),
        lambda r: f"batch {tuple(r[0].shape)}, image resized to {r[1][0][0]}x{r[1][0][1]}",
    )
    size = image_sizes[0]
    gt = resized_targets[0]["boxes"]
    shown = np.clip(resize_bilinear(image, size), 0, 1)  # the image in the model's frame

    # 2. backbone: ResNet + FPN -> P2..P6
    features = stage(
        "backbone",
        lambda: model.backbone(batch),
        lambda f: (
            "FPN "
            + " ".join(f"P{k + 2} {m.shape[2]}x{m.shape[3]}" for k, m in enumerate(f))
            + f", {f[0].shape[1]} channels"
        ),
    )

    # 3. anchors (no kernel: the same NumPy code on every backend)
    generator = model.rpn.anchor_generator
    feature_sizes = [f.shape[2:] for f in features]
    start = time.perf_counter()
    levels = generator.generate(batch.shape[2:], feature_sizes)
    seconds = {backends[0]: time.perf_counter() - start}
    anchors = np.concatenate(levels).astype(dtype)
    stage(
        "anchors",
        lambda: None,
        f"{len(anchors):,} anchors ("
        + ", ".join(f"P{k + 2} {len(a)}" for k, a in enumerate(levels))
        + "); NumPy only",
        seconds,
    )
    fig = plot_anchor_tiling(
        shown,
        levels,
        generator.strides(batch.shape[2:], feature_sizes),
        location=(size[0] // 2, size[1] // 2),
    )
    fig.axes[0].set_title(
        f"Grids of P3 and P4 (dots); every level's anchors at one location\n"
        f"(sizes {', '.join(str(s[0]) for s in cfg.anchor_sizes)} px, 3 aspect ratios)"
    )
    save(fig, out / "01_anchors.png")

    # 4. matching: IoU of every gt with every anchor, then 0.7 / 0.3 with low-quality matches
    matcher = Matcher(cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh, allow_low_quality_matches=True)
    matches = stage(
        "matching",
        lambda: matcher(box_iou(gt, anchors)),
        lambda m: (
            f"IoU {len(gt)} x {len(anchors):,}: {(m >= 0).sum()} positive, "
            f"{(m == -2).sum():,} ignored, {(m == -1).sum():,} negative"
        ),
        agree=np.array_equal,
    )
    fig = plot_anchor_labels(
        shown,
        gt,
        anchors,
        matches >= 0,
        matches == Matcher.BELOW_LOW_THRESHOLD,
        matches == Matcher.BETWEEN_THRESHOLDS,
        f"Anchor matches at {cfg.rpn_fg_iou_thresh} / {cfg.rpn_bg_iou_thresh} (as the RPN trains)",
        rng=np.random.default_rng(0),
        max_shown=40,
        thresholds=(cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh),
    )
    save(fig, out / "02_matching.png")

    # 5. RPN head: objectness and deltas for every anchor
    objectness, deltas = stage(
        "rpn head",
        lambda: flatten_predictions(*model.rpn.head(features)),
        lambda r: f"objectness {tuple(r[0].shape)}, deltas {tuple(r[1].shape)}",
    )
    objectness, deltas = objectness[0], deltas[0]
    num_per_level = [len(a) for a in levels]

    # 6. proposals: top-n per level, decode, clip, NMS per level, top post_n
    proposals, scores = stage(
        "proposals",
        lambda: select_proposals(
            objectness, deltas, anchors, num_per_level, size, cfg, training=False
        ),
        lambda r: (
            f"top {cfg.rpn_pre_nms_top_n_test}/level, decode, clip, NMS "
            f"{cfg.rpn_nms_thresh} per level -> {len(r[0])} proposals"
        ),
    )
    # The figure needs the boxes before NMS and their levels too.
    boxes, probs, level = proposal_candidates(
        objectness, deltas, anchors, num_per_level, size, cfg, training=False
    )
    order = np.argsort(-probs, kind="stable")
    survivors = batched_nms(boxes, probs, level, cfg.rpn_nms_thresh)
    n = 30
    fig = plot_proposals_nms(
        shown,
        boxes[order[:n]],
        level[order[:n]],
        boxes[survivors[:n]],
        level[survivors[:n]],
        gt,
        cfg.rpn_nms_thresh,
    )
    fig.suptitle(
        f"RPN of the shipped model: {len(boxes)} boxes, {len(survivors)} after NMS, "
        f"the best {len(proposals)} are the proposals",
        y=0.95,
    )
    save(fig, out / "03_proposals.png")

    # 7. RoI heads: box head on RoIAlign 7x7 features, then the mask head on the detections
    heads = stage(
        "roi heads",
        lambda: model.roi_heads(features[:4], [proposals], image_sizes)[0],
        lambda d: (
            f"{len(proposals)} proposals -> {len(d[0]['boxes'])} detections "
            f"(RoIAlign {cfg.box_roi_output_size}x{cfg.box_roi_output_size} box, "
            f"{cfg.mask_roi_output_size}x{cfg.mask_roi_output_size} mask)"
        ),
    )
    fig = _roi_figure(model, heads[0], proposals, features, shown)
    save(fig, out / "04_roipool_vs_roialign.png")

    # 8. back to the image: boxes scaled, 28x28 masks pasted into image-sized ones
    original = [tuple(image.shape[1:])]
    final = stage(
        "paste masks",
        lambda: model.transform.postprocess(heads, image_sizes, original)[0],
        lambda d: f"{len(d['boxes'])} masks pasted into {original[0][0]}x{original[0][1]}",
    )

    # 9. the whole model in one call: the sum of the rows above, plus checks and casts
    whole = stage(
        "whole model",
        lambda: model([x])[0],
        lambda d: f"image -> {(d['scores'] >= 0.5).sum()} detections with score >= 0.5",
        agree=lambda a, b: (
            np.array_equal(a["labels"], b["labels"])
            and np.allclose(a["boxes"], b["boxes"], atol=1e-2)
        ),
    )
    del final, whole
    print("-" * (13 + width + 50))

    images = [dataset[i][0] for i in range(len(dataset))]
    with use_backend(backends[-1]):
        detections = model(images)
    truths = [dataset[i][1] for i in range(len(dataset))]
    fig = plot_detection_rows(
        images,
        [(None, detections)],
        ShapesDataset.CLASSES,
        truths=truths,
        title="the shipped shapes model: detections with score >= 0.5, masks cut at "
        "probability 0.5",
    )
    save(fig, out / "05_detections.png")
    print(f"\nfigures: {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}/")
    return 0


def _roi_figure(model, detections, proposals, features, image):
    """RoIPool's bins vs RoIAlign's samples for the best detection, on the level FPN picks.

    detections: one image's RoI-head output in the model's (resized) frame; image: (3, h, w)
    in that frame. Falls back to the best proposal when nothing was detected.
    """
    from .plotting.roi_ops import plot_roi_pool_vs_align_on_level
    from .roi_ops import roi_align, roi_align_sampling_points, roi_pool, roi_pool_bins

    if len(detections["boxes"]):
        box, what = detections["boxes"][0], "the best detection"
    else:
        box, what = proposals[0], "the best proposal (nothing was detected)"
    pooler = model.roi_heads.box_roi_pool  # MultiScaleRoIAlign, scales set by the last call
    index = int(pooler.levels(box[None])[0])
    scale = pooler.scales[index]
    fmap = features[index]
    size = model.cfg.box_roi_output_size
    rois = np.concatenate([[0.0], box]).astype(fmap.dtype)[None]
    bins = [
        b[0]
        for b in roi_pool_bins(
            rois.astype(np.float64), (size, size), scale, *fmap.shape[2:], fmap.dtype.type
        )
    ]
    pooled = roi_pool(fmap, rois, size, scale)[0][0]
    (points,) = roi_align_sampling_points(rois, size, scale, pooler.sampling_ratio)
    aligned = roi_align(fmap, rois, size, scale, pooler.sampling_ratio)[0]
    channel = int(np.argmax(aligned.reshape(len(aligned), -1).std(axis=1)))
    return plot_roi_pool_vs_align_on_level(
        image,
        box,
        pooler.k_min + index,
        scale,
        bins,
        points,
        pooled[channel],
        aligned[channel],
        title=f"{what} on P{pooler.k_min + index} (stride {1 / scale:g}), the level FPN's "
        f"mapping picks; channel {channel} of {fmap.shape[1]} pooled on the right",
    )


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

    try:
        if args.checkpoint is None:
            return MaskRCNN.from_pretrained("shapes")
        return MaskRCNN.from_checkpoint(args.checkpoint)
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
    import matplotlib

    matplotlib.use("Agg")  # predict only writes its figure to a file

    from .plotting import save
    from .plotting.detections import plot_detections
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
    fig = plot_detections(
        image,
        detections,
        names,
        args.score_thresh,
        title=f"{args.image.name}: {len(keep)} detections",
    )
    save(fig, out)
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


def _add_check(commands):
    p = commands.add_parser(
        "check",
        help="say which framework's RoIAlign rule produced an output (roi_check.py)",
        description="Load CASE.npz (features, rois, output; optional spatial_scale, "
        "sampling_ratio), run every RoIAlign variant (torchvision, ONNX, onnxruntime, "
        "OpenVINO, mmcv, TensorRT, Caffe2, TensorFlow, RoIPool) and print them ranked, a "
        "verdict, and where the closest one departs. Exit 0 on a match, 1 on none, 2 on bad input.",
    )
    p.add_argument("case", type=pathlib.Path, help="the .npz file")
    p.add_argument(
        "--layout", choices=("nchw", "nhwc"), default="nchw", help="of features and output"
    )
    p.add_argument(
        "--boxes",
        choices=("xyxy", "normalized-yxyx"),
        default="xyxy",
        help="xyxy: input pixels; normalized-yxyx: TensorFlow's [y1, x1, y2, x2] over size - 1",
    )
    p.add_argument("--save-figure", metavar="PNG", help="draw the RoI with the largest gap")
    p.set_defaults(run=_roi_check)


def _roi_check(args) -> int:
    from .roi_check import check

    return check(args.case, args.layout, args.boxes, args.save_figure)


if __name__ == "__main__":
    sys.exit(main())
