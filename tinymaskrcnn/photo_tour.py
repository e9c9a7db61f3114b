"""The tour on any photograph with any checkpoint (``tinymaskrcnn tour --image PHOTO``).

The same stages, timings and figures as the shapes tour (tour.py), on an image Pillow
reads and a model written here or converted from torchvision (``convert-torchvision``),
whose class names the checkpoint stores. Two things differ because a photograph comes
without annotations and can be large:

* **Matching needs ground truth.** The anchors are matched against the model's own
  detections scoring at least 0.5 (their boxes, labels and masks cut at 0.5), standing
  in for ground truth; the figure says so. With none that confident the best detection
  stands in, and with no detection at all the best proposal.
* **Readable at 800 x 1216 with 1000 proposals.** Figures draw the top-k (the best 30
  proposals before and after NMS, 40 of each kind of anchor label) and say so in their
  titles; the anchor grids drawn are the two finest levels with at most ``MAX_DOTS``
  locations (P5 and P6 at 800 x 1216, P3 and P4 for the shapes model).
"""

from __future__ import annotations

import numpy as np

from . import nn
from .tour import (
    anchors_figure,
    matching_figure,
    proposals_figure,
    report,
    roi_figure,
    time_stages,
)

SCORE_THRESH = 0.5  # detections at least this good stand in for ground truth, and are drawn
MAX_DOTS = 1000  # anchor locations a grid may have to be drawn as dots
SHOWN_PROPOSALS = 30


def stand_in_target(arrays, score_thresh=SCORE_THRESH):
    """Ground truth for matching, from one inference's recorded arrays (``Recorder.arrays``).

    The detections (original frame) scoring at least ``score_thresh``, else the best one,
    else the best proposal (label 1). Returns (target, what), target a dict of boxes
    (G, 4) float32 x1y1x2y2 original pixels, labels (G,) int64, masks (G, H, W) uint8 (a
    mask cut at 0.5, or the box filled where the cut leaves nothing), and ``what`` a
    phrase for the figure's title.
    """
    (det,) = arrays["masks"]["detections"]
    (height, width) = arrays["transform"]["original_sizes"][0]
    keep = np.flatnonzero(det["scores"] >= score_thresh)
    if len(keep):
        what = f"{len(keep)} detections scoring >= {score_thresh:g}"
    elif len(det["scores"]):
        keep, what = np.array([0]), f"best detection (none scores >= {score_thresh:g})"
    if len(det["scores"]):
        boxes, labels = det["boxes"][keep], det["labels"][keep]
        masks = (det["masks"][keep, 0] > 0.5).astype(np.uint8)
    else:
        (resized,) = arrays["transform"]["image_sizes"]
        ratio = np.array([width / resized[1], height / resized[0]] * 2, np.float32)
        boxes = arrays["proposals"]["boxes"][0][:1] * ratio
        labels, masks = np.ones(1, np.int64), np.zeros((1, height, width), np.uint8)
        what = "best proposal (nothing was detected)"
    boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes, strict=True):
        if not mask.any():
            mask[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = 1
    target = {"boxes": boxes, "labels": labels.astype(np.int64), "masks": masks}
    return target, what


def grid_levels(num_per_level, anchors_per_location, max_dots=MAX_DOTS):
    """The two finest level indices (0 = P2) with at most ``max_dots`` locations each."""
    locations = np.asarray(num_per_level) // anchors_per_location
    small = [k for k, n in enumerate(locations) if n <= max_dots]
    return tuple(small[:2]) if len(small) >= 2 else (len(locations) - 2, len(locations) - 1)


def run_photo_tour(model, image, name, backends, out, repeats=1, print=print) -> None:
    """Time and draw every stage of ``model`` on one photograph; figures go to ``out``.

    model: a MaskRCNN. image: (3, H, W) float32 RGB in [0, 1]. name: the image's file
    name, for the titles. backends: names to time. out: a pathlib.Path folder.
    """
    found = {}

    def target_of(arrays):
        found["target"], found["what"] = stand_in_target(arrays)
        return found["target"]

    inference, training, times = time_stages(model, image, target_of, backends, repeats)
    seen, learnt = report(model, inference, training, times, backends, print)
    _draw(model, image, name, seen, learnt, found["what"], out)
    print(f"\nfigures: {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}/")


def _draw(model, image, name, seen, learnt, what, out):
    from .plotting import save
    from .plotting.detections import plot_detections

    cfg = model.cfg
    (size,) = seen["transform"]["image_sizes"]
    shown = np.clip(nn.resize_bilinear(image, size), 0, 1)  # the model's frame
    levels = grid_levels(seen["anchors"]["num_per_level"], cfg.num_anchors_per_location)
    save(anchors_figure(cfg, seen, shown, size, levels), out / "01_anchors.png")
    matching = (
        f"Anchor matches at {cfg.rpn_fg_iou_thresh} / {cfg.rpn_bg_iou_thresh} (as the RPN "
        f"trains)\nagainst the model's own {what}, standing in for ground truth"
    )
    save(matching_figure(cfg, learnt, shown, matching), out / "02_matching.png")
    (candidates,) = seen["proposal_candidates"]["boxes"]
    (survivors,) = seen["proposals"]["nms_keep"]
    (proposals,) = seen["proposals"]["boxes"]
    shown_n = min(SHOWN_PROPOSALS, len(candidates))
    rpn = (
        f"RPN on {name}: {len(candidates):,} boxes, {len(survivors):,} after NMS, the best "
        f"{len(proposals):,} are the proposals; drawn: the top {shown_n} of each"
    )
    fig = proposals_figure(cfg, seen, learnt, shown, SHOWN_PROPOSALS, rpn)
    save(fig, out / "03_proposals.png")
    save(roi_figure(cfg, seen, shown), out / "04_roipool_vs_roialign.png")
    (final,) = seen["masks"]["detections"]
    count = int((final["scores"] >= SCORE_THRESH).sum())
    title = (
        f"{name}: {count} of {len(final['scores'])} detections with score >= "
        f"{SCORE_THRESH:g}, masks cut at probability 0.5"
    )
    fig = plot_detections(image, final, model.class_names, SCORE_THRESH, title, inches=10.0)
    save(fig, out / "05_detections.png")
