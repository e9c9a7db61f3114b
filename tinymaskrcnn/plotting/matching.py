"""Matching: IoU of boxes with anchors and the labels the Matcher gives (tutorials 02, 06).

Shapes used below:
    G: ground-truth boxes of one image    N: anchors (all levels, concatenated)
"""

import matplotlib.pyplot as plt
import numpy as np

from . import (
    GROUND_TRUTH,
    IGNORED,
    NEGATIVE,
    POSITIVE,
    draw_boxes,
    legend_below,
    show_image,
    write_values,
)


def plot_iou_matrix(iou, row_names, col_names, title):
    """A heat map of an IoU matrix with its values written in each cell.

    iou: (G, N) float in [0, 1], box_iou(gt_boxes, anchors) (or some of its columns).
    row_names: G labels of the ground-truth boxes; col_names: N labels of the anchors.
    """
    g, n = iou.shape
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * n + 2), max(2.5, 0.5 * g + 1.5)))
    im = ax.imshow(iou, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    write_values(ax, iou, ".2f", dark=iou < 0.6, fontsize=7)  # viridis is dark at 0
    ax.set_xticks(range(n), col_names, rotation=90, fontsize=7)
    ax.set_yticks(range(g), row_names, fontsize=8)
    ax.set_xlabel("anchor (index in the concatenated anchor list)")
    ax.set_ylabel("ground-truth box")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="IoU", fraction=0.03)
    return fig


def _dimmed_image(image, title):
    """A new figure with the image dimmed, so that thin anchors drawn over it show."""
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    show_image(ax, image, title, dim=0.45)
    return fig, ax


def plot_anchor_labels(
    image, gt_boxes, anchors, positive, negative, ignored, title, rng, max_shown=60,
    thresholds=(0.7, 0.3),
):  # fmt: skip
    """Anchors labelled for training: every positive, and samples of negative and ignored.

    image: (3, H, W) float in [0, 1]. gt_boxes: (G, 4) and anchors: (N, 4) float,
        x1 y1 x2 y2 in the pixels of ``image``.
    positive, negative, ignored: (N,) bool masks over the anchors, e.g. from the Matcher's
        output (>= 0, == -1, == -2) or the sampled minibatch (docs/architecture.md,
        Matching and sampling). Each class has one colour in every figure (plotting's palette).
    rng: np.random.Generator drawing which negative and ignored anchors are shown,
        ``max_shown`` of each (all of them would hide the image).
    thresholds: (high, low) IoU thresholds, for the legend.
    """
    fig, ax = _dimmed_image(image, title)
    high, low = thresholds
    for members, style, name in (
        (negative, NEGATIVE, f"negative (IoU < {low})"),
        (ignored, IGNORED, f"ignored ({low} <= IoU < {high})"),
    ):
        members = np.flatnonzero(members)
        shown = rng.choice(members, size=min(max_shown, members.size), replace=False)
        label = f"{name}: {members.size:,} ({shown.size} shown)"
        draw_boxes(ax, anchors[shown], label=label, **style)
    label = f"positive (IoU >= {high}, or an object's best): {np.sum(positive)}"
    draw_boxes(ax, anchors[np.asarray(positive, bool)], label=label, **POSITIVE)
    # Last, on top of the positives that match it.
    draw_boxes(ax, gt_boxes, label="ground truth", **GROUND_TRUTH)
    legend_below(ax)
    return fig


def plot_low_quality_rescue(image, gt_boxes, anchors, rescued, best_iou, title):
    """The anchors that are positive only thanks to the low-quality rule.

    image: (3, H, W) float in [0, 1]. gt_boxes: (G, 4) and anchors: (N, 4) float,
        x1 y1 x2 y2 in the pixels of ``image``.
    rescued: (N,) bool, positive with low-quality matches and not without them.
    best_iou: (N,) float, each anchor's best IoU with any gt box.
    """
    fig, ax = _dimmed_image(image, title)
    draw_boxes(ax, gt_boxes, label="ground truth", **GROUND_TRUTH)
    idx = np.flatnonzero(rescued)
    values = ", ".join(f"{v:.2f}" for v in np.unique(np.round(best_iou[idx], 2)))
    label = f"rescued: {idx.size} anchors, best IoU {values}"
    draw_boxes(ax, anchors[idx], color="magenta", linewidth=1.8, halo=True, label=label)
    legend_below(ax)
    return fig
