"""The tour and the bench: the package timed on each backend, with figures.

``run_tour``: the shipped shapes model run once per backend, stage by stage
(``photo_tour.py`` runs the same on a photograph with any checkpoint, through
``time_stages``, ``report`` and the figure functions here).

Nothing here computes a stage. ``MaskRCNN.forward`` reports each stage boundary to a
trace (``model.STAGES``); the tour's ``Recorder`` keeps what each stage handed on and the
moment it did, so a stage's time is the time since the previous boundary. The table
groups the stages as a reader meets them (transform, backbone + FPN, anchors, matching,
RPN head, proposals, RoI heads, mask pasting, the whole model), and the five figures are
drawn from the recorded arrays: anchors, anchor matches at 0.7 / 0.3, proposals before
and after NMS, RoIPool's bins vs RoIAlign's samples on the best detection, detections.

The anchor matching happens only in training, so the tour also runs one training
forward (no backward) and restores the weights afterwards: the shapes model uses batch
norm, whose running statistics a training forward updates.
"""

from __future__ import annotations

import os
import time

import numpy as np

from . import kernels, nn
from .kernels import available_backends, use_backend

TOUR_IMAGES = 4  # images in the detections figure; the stages run on the first
REPEATS = 3  # timed runs per backend after the warm-up; the best is shown

# Table rows -> the trace stages whose times they add up ("whole model": all of them).
ROWS = {
    "transform": ("transform",),
    "backbone": ("backbone", "fpn"),
    "anchors": ("anchors",),
    "matching": ("matching",),
    "rpn head": ("rpn_head",),
    "proposals": ("proposal_candidates", "proposals"),
    "roi heads": ("roi_features", "box_head", "detections_before_nms", "detections", "mask_logits"),
    "paste masks": ("masks",),
}


class Recorder:
    """A trace for ``MaskRCNN.forward``: each stage's arrays and the time it was reached."""

    def __init__(self):
        self.arrays: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, stage, **arrays):
        now = time.perf_counter()
        # Under "cuda" some stages hand on device arrays (the feature maps): the figures
        # and the table read host copies, made outside the stages' times.
        self.arrays[stage] = _on_host(arrays)
        self.seconds[stage] = now - self._last
        self._last = time.perf_counter()


def _on_host(value):
    """``value`` with every device array in it (in lists, tuples, dicts) copied to the host."""
    if isinstance(value, dict):
        return {k: _on_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_host(v) for v in value)
    return kernels.to_host(value)


def tour_backends(choice: str) -> list[str]:
    """The backends to time: ``choice``, or every available one for "all" (the CUDA
    simulator is left out: it proves kernels correct, its times mean nothing)."""
    available = available_backends()
    if choice != "all":
        if choice not in available:
            raise ValueError(
                f"backend {choice!r} is not available here (available: {', '.join(available)})"
            )
        return [choice]
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    return [b for b in available if not (b == "cuda" and simulated)]


def best_of(run, backend, repeats=REPEATS):
    """Run ``run() -> Recorder`` once to warm up (Numba compiles), then ``repeats`` times
    under ``backend``. Returns the last Recorder and each stage's best time in seconds."""
    with use_backend(backend):
        run()
        best = {}
        for _ in range(repeats):
            recorder = run()
            for stage, seconds in recorder.seconds.items():
                best[stage] = min(best.get(stage, np.inf), seconds)
            whole = sum(recorder.seconds.values())
            best["whole model"] = min(best.get("whole model", np.inf), whole)
    return recorder, best


def record(model, images, targets=None):
    """One forward of ``model`` on ``images`` with a Recorder; training when ``targets``
    is given (under no_grad, weights restored after), else inference."""
    recorder = Recorder()
    if targets is None:
        model.eval()(images, trace=recorder)
        return recorder
    saved = model.state_dict()
    try:
        with nn.no_grad():
            model.train()(images, targets, trace=recorder)
    finally:
        model.load_state_dict(saved)
        model.eval()
    return recorder


def run_tour(model, dataset, backends, out, print=print, repeats=REPEATS) -> None:
    """Time and draw every stage of ``model`` on ``dataset[0]``; figures go to ``out``.

    model: a MaskRCNN (the shipped shapes model). dataset: indexable (image, target).
    backends: names to time. out: a pathlib.Path folder for the PNGs. repeats: timed
    runs per backend after the warm-up.
    """
    image, target = dataset[0]
    inference, training, times = time_stages(model, image, target, backends, repeats)
    seen, learnt = report(model, inference, training, times, backends, print)
    _draw(model, dataset, seen, learnt, backends[-1], out)
    print(f"\nfigures: {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}/")


def time_stages(model, image, target, backends, repeats=REPEATS):
    """Record and time one image's inference and training forwards on every backend.

    image: (3, H, W) float in [0, 1]. target: its target dict (boxes, labels, masks,
    original frame), or a function that makes one from the first backend's inference
    ``Recorder.arrays`` (the photo tour's stand-in ground truth), so that every backend
    matches anchors against the same boxes. Returns (inference, training) Recorders per
    backend and each backend's best time per stage ({backend: {stage: seconds}}).
    """
    inference, training, times = {}, {}, {}
    for b in backends:
        inference[b], eval_times = best_of(lambda: record(model, [image]), b, repeats)
        if callable(target):
            target = target(inference[b].arrays)
        training[b], train_times = best_of(lambda t=target: record(model, [image], [t]), b, repeats)
        times[b] = {**eval_times, "matching": train_times["matching"]}
    return inference, training, times


def report(model, inference, training, times, backends, print=print):
    """Print the table of stages (time per backend, what each made, whether the backends
    agree); returns the first backend's (inference, training) arrays, which the figures
    draw."""
    seen, learnt = inference[backends[0]].arrays, training[backends[0]].arrays
    agree = {
        "matching": all(_same_labels(learnt, training[b].arrays) for b in backends),
        "whole model": all(_same_detections(seen, inference[b].arrays) for b in backends),
    }
    _print_table(model, seen, learnt, times, agree, backends, print)
    return seen, learnt


def _same_labels(a, b):
    return all(
        np.array_equal(x, y)
        for x, y in zip(a["matching"]["labels"], b["matching"]["labels"], strict=True)
    )


def _same_detections(a, b):
    (x,), (y,) = a["masks"]["detections"], b["masks"]["detections"]
    return np.array_equal(x["labels"], y["labels"]) and np.allclose(
        x["boxes"], y["boxes"], atol=1e-2
    )


def _what(model, seen, learnt):
    """The last column of the table: what each row's stages made."""
    cfg = model.cfg
    batch, (size,) = seen["transform"]["batch"], seen["transform"]["image_sizes"]
    levels = seen["anchors"]["num_per_level"]
    (labels,) = learnt["matching"]["labels"]
    gt = len(learnt["transform"]["targets"][0]["boxes"])
    (proposals,) = seen["proposals"]["boxes"]
    (detected,) = seen["detections"]["detections"]
    (final,) = seen["masks"]["detections"]
    objectness, deltas = seen["rpn_head"]["objectness"], seen["rpn_head"]["deltas"]
    box, mask = cfg.box_roi_output_size, cfg.mask_roi_output_size
    (original,) = seen["transform"]["original_sizes"]
    return {
        "transform": f"batch {tuple(batch.shape)}, image resized to {size[0]}x{size[1]}",
        "backbone": "FPN "
        + " ".join(
            f"P{k + 2} {m.shape[2]}x{m.shape[3]}" for k, m in enumerate(seen["fpn"]["features"])
        )
        + f", {seen['fpn']['features'][0].shape[1]} channels",
        "anchors": f"{sum(levels):,} anchors ("
        + ", ".join(f"P{k + 2} {n}" for k, n in enumerate(levels))
        + ")",
        "matching": f"IoU {gt} x {len(labels):,}: {(labels == 1).sum()} positive, "
        f"{(labels == -1).sum():,} ignored, {(labels == 0).sum():,} negative",
        "rpn head": f"objectness {tuple(objectness.shape)}, deltas {tuple(deltas.shape)}",
        "proposals": f"top {cfg.rpn_pre_nms_top_n_test}/level, decode, clip, NMS "
        f"{cfg.rpn_nms_thresh} per level -> {len(proposals)} proposals",
        "roi heads": f"{len(proposals)} proposals -> {len(detected['boxes'])} detections "
        f"(RoIAlign {box}x{box} box, {mask}x{mask} mask)",
        "paste masks": f"{len(final['boxes'])} masks pasted into {original[0]}x{original[1]}",
        "whole model": f"image -> {(final['scores'] >= 0.5).sum()} detections with score >= 0.5",
    }


def _print_table(model, seen, learnt, times, agree, backends, print):
    what = _what(model, seen, learnt)
    width = 13 + 12 * len(backends) + 50
    print(f"{'stage':<13s}" + "".join(f"{b + ' ms':>12s}" for b in backends) + "   what it made")
    print("-" * width)
    for row in [*ROWS, "whole model"]:
        stages = ROWS.get(row, (row,))
        cells = "".join(f"{sum(times[b][s] for s in stages) * 1e3:12.1f}" for b in backends)
        flag = "" if agree.get(row, True) else "  (backends DISAGREE)"
        print(f"{row:<13s}{cells}   {what[row]}{flag}")
    print("-" * width)


def _draw(model, dataset, seen, learnt, backend, out):
    from .plotting import save
    from .plotting.detections import plot_detection_rows

    cfg = model.cfg
    (size,) = seen["transform"]["image_sizes"]
    # The image in the model's frame (the figures draw the resized image).
    shown = np.clip(nn.resize_bilinear(dataset[0][0], size), 0, 1)
    save(anchors_figure(cfg, seen, shown, size), out / "01_anchors.png")
    save(matching_figure(cfg, learnt, shown), out / "02_matching.png")
    save(proposals_figure(cfg, seen, learnt, shown), out / "03_proposals.png")
    save(roi_figure(cfg, seen, shown), out / "04_roipool_vs_roialign.png")
    images = [dataset[i][0] for i in range(len(dataset))]
    with use_backend(backend):
        detections = model.eval()(images)
    truths = [dataset[i][1] for i in range(len(dataset))]
    fig = plot_detection_rows(
        images,
        [(None, detections)],
        model.class_names,
        truths=truths,
        title="the shipped shapes model: detections with score >= 0.5, masks cut at "
        "probability 0.5",
    )
    save(fig, out / "05_detections.png")


def anchors_figure(cfg, seen, shown, size, grid_levels=(1, 2)):
    """grid_levels: the two level indices (0 = P2) whose grids are drawn as dots."""
    from .plotting.anchors import plot_anchor_tiling

    anchors = seen["anchors"]
    per_level = np.split(anchors["anchors"], np.cumsum(anchors["num_per_level"])[:-1])
    fig = plot_anchor_tiling(
        shown,
        per_level,
        anchors["strides"],
        location=(size[0] // 2, size[1] // 2),
        grid_levels=grid_levels,
    )
    a, b = (k + 2 for k in grid_levels)
    fig.axes[0].set_title(
        f"Grids of P{a} and P{b} (dots); every level's anchors at one location\n"
        f"(sizes {', '.join(str(s[0]) for s in cfg.anchor_sizes)} px, 3 aspect ratios)"
    )
    return fig


def matching_figure(cfg, learnt, shown, title=None):
    from .plotting.matching import plot_anchor_labels

    high, low = cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh
    (labels,) = learnt["matching"]["labels"]
    gt = learnt["transform"]["targets"][0]["boxes"]
    return plot_anchor_labels(
        shown,
        gt,
        learnt["matching"]["anchors"],
        labels == 1,
        labels == 0,
        labels == -1,
        title or f"Anchor matches at {high} / {low} (as the RPN trains)",
        rng=np.random.default_rng(0),
        max_shown=40,
        thresholds=(cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh),
    )


def proposals_figure(cfg, seen, learnt, shown, n=30, title=None):
    """The best ``n`` candidates before and after NMS; ``title`` replaces the default."""
    from .plotting.rpn import plot_proposals_nms

    (boxes,) = seen["proposal_candidates"]["boxes"]
    (scores,) = seen["proposal_candidates"]["scores"]
    (level,) = seen["proposal_candidates"]["levels"]
    (survivors,) = seen["proposals"]["nms_keep"]
    (proposals,) = seen["proposals"]["boxes"]
    order = np.argsort(-scores, kind="stable")[:n]
    fig = plot_proposals_nms(
        shown,
        boxes[order],
        level[order],
        boxes[survivors[:n]],
        level[survivors[:n]],
        learnt["transform"]["targets"][0]["boxes"],
        cfg.rpn_nms_thresh,
    )
    default = (
        f"RPN of the shipped model: {len(boxes)} boxes, {len(survivors)} after NMS, "
        f"the best {len(proposals)} are the proposals"
    )
    fig.suptitle(title or default, y=0.95)
    return fig


def roi_figure(cfg, seen, shown):
    """RoIPool's bins vs RoIAlign's samples for the best detection, on the level FPN picks
    (the best proposal when nothing was detected)."""
    from .plotting.roi_ops import plot_roi_pool_vs_align_on_level
    from .roi_ops import (
        MultiScaleRoIAlign,
        roi_align,
        roi_align_sampling_points,
        roi_pool,
        roi_pool_bins,
    )

    (detected,) = seen["detections"]["detections"]
    if len(detected["boxes"]):
        box, what = detected["boxes"][0], "the best detection"
    else:
        box, what = seen["proposals"]["boxes"][0][0], "the best proposal (nothing was detected)"
    features = seen["fpn"]["features"][:4]  # the RoI heads read P2..P5
    # A fresh pooler with the box head's settings, scaled from the recorded shapes.
    pooler = MultiScaleRoIAlign(cfg.box_roi_output_size, cfg.roi_sampling_ratio)
    pooler.setup_scales([f.shape for f in features], seen["transform"]["image_sizes"])
    index = int(pooler.levels(box[None])[0])
    scale, fmap, size = pooler.scales[index], features[index], cfg.box_roi_output_size
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
    level = pooler.k_min + index
    return plot_roi_pool_vs_align_on_level(
        shown, box, level, scale, bins, points, pooled[channel], aligned[channel],
        title=f"{what} on P{level} (stride {1 / scale:g}), the level FPN's mapping picks; "
        f"channel {channel} of {fmap.shape[1]} pooled on the right",
    )  # fmt: skip


# --- bench: the hot ops and a model step -----------------------------------------------


def bench_cases(quick):
    """(name, function of no arguments) for each timed case; smaller sizes when ``quick``."""
    from .boxes import box_iou, nms
    from .config import MaskRCNNConfig
    from .data.shapes import ShapesDataset
    from .model import MaskRCNN
    from .nn.conv import conv2d
    from .roi_ops import roi_align, roi_align_backward

    rng = np.random.default_rng(0)
    n, side, k = (500, 50, 100) if quick else (2000, 100, 500)
    xy = rng.uniform(0, 700, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(16, 200, (n, 2))], axis=1).astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    features = rng.standard_normal((1, 64, side, side)).astype(np.float32)
    corner = rng.uniform(0, 4 * side - 64, (k, 2))
    rois = np.concatenate(
        [np.zeros((k, 1)), corner, corner + rng.uniform(16, 64, (k, 2))], axis=1
    ).astype(np.float32)
    grad = rng.standard_normal((k, 64, 7, 7)).astype(np.float32)
    x = rng.standard_normal((4, 32, side, side)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    model = MaskRCNN(MaskRCNNConfig.shapes(), rng=np.random.default_rng(0))
    shapes = ShapesDataset(4, seed=1)
    images, targets = [shapes[i][0] for i in range(4)], [shapes[i][1] for i in range(4)]

    def train_step():
        model.train()(images, targets)
        model.backward()
        model.zero_grad()

    return [
        (f"box_iou {n} x {n}", lambda: box_iou(boxes, boxes)),
        (f"nms {n} boxes", lambda: nms(boxes, scores, 0.7)),
        (f"roi_align {k} RoIs, (1,64,{side},{side}) -> 7x7",
         lambda: roi_align(features, rois, 7, 0.25, 2)),
        (f"roi_align_backward {k} RoIs",
         lambda: roi_align_backward(grad, rois, features.shape, 0.25, 2)),
        (f"conv2d 3x3 (4,32,{side},{side})", lambda: conv2d(x, w, padding=1)),
        ("shapes model inference, 4 images 128x128", lambda: model.eval()(images)),
        ("shapes model training step, 4 images", train_step),
    ]  # fmt: skip


def run_bench(backends, repeats=3, quick=False, print=print) -> None:
    """Print the median time of each bench case on each backend (after a warm-up)."""
    cases = bench_cases(quick)
    width = max(len(name) for name, _ in cases)
    print(f"{'':{width}s}  " + "  ".join(f"{b:>10s}" for b in backends) + "   (median ms)")
    for name, fn in cases:
        times = []
        for b in backends:
            with use_backend(b):
                fn()
                runs = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    fn()
                    runs.append(time.perf_counter() - start)
            times.append(float(np.median(runs)))
        ratio = ""
        if backends[:2] == ["numpy", "numba"]:
            ratio = f"   numpy/numba {times[0] / times[1]:5.1f}x"
        print(f"{name:{width}s}  " + "  ".join(f"{t * 1e3:10.1f}" for t in times) + ratio)
