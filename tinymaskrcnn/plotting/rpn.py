"""The RPN: objectness on every level, proposals before and after NMS (tutorial 06, tour).

Anchor labels, which the RPN trains on, are drawn by ``plotting.matching``.

Shapes used below:
    L: pyramid levels    Hl, Wl: locations of level l    n: proposals drawn
    G: ground-truth boxes
"""

import matplotlib.pyplot as plt
import numpy as np

from . import GROUND_TRUTH, LEVEL_COLOURS, draw_boxes, legend_below, show_image


def plot_objectness_levels(image, maps, strides):
    """The RPN's objectness on every pyramid level, over the image.

    image: (3, H, W) float in [0, 1]. maps: list of L (Hl, Wl) float in [0, 1], the
    highest sigmoid(objectness) of the A anchors of each location. strides: L ints.
    Location (r, c) is drawn as a square centred on (c, r) * stride: torchvision
    centres a location's anchors on its cell's top-left corner, not on the cell centre
    (docs/architecture.md, Anchors).
    """
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3.2 * (len(maps) + 1), 3.8))
    h, w = np.asarray(image).shape[1:]
    show_image(axes[0], image, "input image")
    for level, (ax, m, stride) in enumerate(zip(axes[1:], maps, strides, strict=True), start=2):
        show_image(ax, image, dim=0.6)
        rows, cols = m.shape
        extent = (-stride / 2, cols * stride - stride / 2, rows * stride - stride / 2, -stride / 2)
        im = ax.imshow(m, extent=extent, vmin=0, vmax=1, cmap="magma", alpha=0.8)
        ax.set_xlim(-stride / 2, w)
        ax.set_ylim(h, -stride / 2)
        ax.set_title(f"P{level} (stride {stride}), {rows}x{cols}")
        ax.set_ylabel("")
        ax.set_yticklabels([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="max over anchors of sigmoid(objectness)")
    return fig


def plot_proposals_nms(
    image, before, before_level, after, after_level, gt_boxes, nms_thresh, suppressed=None
):
    """Top proposals before and after the per-level NMS, side by side, coloured by level.

    image: (3, H, W) float in [0, 1]. before, after: (n, 4) float boxes x1 y1 x2 y2 in
    image pixels, by decreasing objectness; before_level, after_level: (n,) int pyramid
    level index (0 = P2). gt_boxes: (G, 4), same frame.
    suppressed: (n,) bool over ``before``, True for the boxes NMS removes; they are
        drawn dotted in black on the left panel instead of in their level's colour.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.8))
    removed = np.zeros(len(before), bool) if suppressed is None else np.asarray(suppressed)
    panels = (
        (before, before_level, removed, f"top {len(before)} proposals before NMS"),
        (after, after_level, np.zeros(len(after), bool),
         f"top {len(after)} after NMS per level (IoU > {nms_thresh})"),
    )  # fmt: skip
    for ax, (boxes, level, gone, name) in zip(axes, panels, strict=True):
        show_image(ax, image, name, dim=0.35)
        for lv in np.unique(level):
            draw_boxes(ax, boxes[(level == lv) & ~gone], color=LEVEL_COLOURS[lv], linewidth=1.4,
                       label=f"from P{lv + 2}")  # fmt: skip
        draw_boxes(ax, gt_boxes, label="ground truth", **GROUND_TRUTH)
        if gone.any():
            draw_boxes(
                ax, boxes[gone], color="black", linewidth=1.4, linestyle=":", label="removed by NMS"
            )
        legend_below(ax, ncol=3, y=-0.12)
    return fig
