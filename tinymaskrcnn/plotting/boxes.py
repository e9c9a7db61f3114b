"""Box coding and NMS: deltas, the clamp in decoding, boxes before and after NMS (tutorial 03).

Shapes used below:
    N: boxes    K: boxes NMS keeps    G: ground-truth boxes
"""

import matplotlib.pyplot as plt
import numpy as np

from . import GROUND_TRUTH, draw_boxes, show_image


def plot_box_deltas(anchor, gt, deltas_by_weights):
    """One anchor, its target box and their deltas for each weight set.

    anchor, gt: (4,) float, x1 y1 x2 y2 in image pixels.
    deltas_by_weights: {label: (4,) float dx dy dw dh}, BoxCoder(weights).encode of the
        pair (docs/architecture.md, Boxes and box coding).
    """
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    draw_boxes(ax, anchor, color="tab:blue", linewidth=2, label="anchor")
    draw_boxes(ax, gt, color="tab:green", linewidth=2, label="target box")
    a_ctr = (anchor[:2] + anchor[2:]) / 2
    g_ctr = (gt[:2] + gt[2:]) / 2
    ax.plot(*a_ctr, "o", color="tab:blue")
    ax.plot(*g_ctr, "o", color="tab:green")
    ax.annotate("", g_ctr, a_ctr, arrowprops={"arrowstyle": "->", "color": "k"})
    lines = [
        f"{label:>20}:  dx {d[0]:+.3f}  dy {d[1]:+.3f}  dw {d[2]:+.3f}  dh {d[3]:+.3f}"
        for label, d in deltas_by_weights.items()
    ]
    ax.text(0.5, -0.14, "\n".join(lines), transform=ax.transAxes, fontsize=8,
            family="monospace", ha="center", va="top")  # fmt: skip
    lo = np.minimum(anchor[:2], gt[:2]) - 30
    hi = np.maximum(anchor[2:], gt[2:]) + 30
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(hi[1], lo[1])
    ax.set_aspect("equal")
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    ax.set_title("Deltas: centre shift in anchor sizes, log of the size ratio")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def plot_decode_clip(dw, clip, anchor_width):
    """Decoded width against dw, with and without the clamp at ``clip``.

    dw: (S,) float, width deltas after dividing by the weight; clip: the clamp,
    log(1000 / 16); anchor_width: the anchor's width in pixels.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.semilogy(dw, np.exp(dw) * anchor_width, "--", color="0.5", label="exp(dw) * w, unclamped")
    ax.semilogy(
        dw,
        np.exp(np.minimum(dw, clip)) * anchor_width,
        color="tab:red",
        label=f"exp(min(dw, log(1000/16) = {clip:.3f})) * w",
    )
    ax.axvline(clip, color="tab:red", linewidth=0.6, linestyle=":")
    ax.set_xlabel("dw (after dividing by the weight ww)")
    ax.set_ylabel(f"decoded width for a {anchor_width:g}-pixel anchor")
    ax.set_title("Decoding clamps dw: a box grows at most 62.5x its anchor")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", linewidth=0.3)
    return fig


def plot_nms(image, boxes, scores, keep, iou_threshold, gt_boxes=None):
    """Boxes before and after NMS, coloured by score.

    image: (3, H, W) float in [0, 1]. boxes: (N, 4) float, x1 y1 x2 y2 image pixels.
    scores: (N,) float in [0, 1]. keep: (K,) int, the indices NMS kept, by decreasing
    score. gt_boxes: optional (G, 4), drawn for reference.
    """
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.5))
    cmap = plt.get_cmap("viridis")
    norm = plt.Normalize(float(np.min(scores)), float(np.max(scores))) if len(scores) else None
    for ax, idx, title in (
        (axes[0], np.argsort(scores), f"Before NMS: {len(boxes)} boxes"),
        (axes[1], np.asarray(keep)[::-1], f"After NMS at IoU > {iou_threshold}: {len(keep)} kept"),
    ):
        show_image(ax, image, title, dim=0.5)
        if gt_boxes is not None:
            draw_boxes(ax, gt_boxes, label="ground truth", **GROUND_TRUTH)
        for k in idx:  # lowest score first, so the best are drawn on top
            draw_boxes(ax, boxes[k], color=cmap(norm(float(scores[k]))), linewidth=1.2)
        if gt_boxes is not None:
            ax.legend(loc="upper right", fontsize=8)
    fig.colorbar(
        plt.cm.ScalarMappable(cmap=cmap, norm=norm), ax=axes, label="score", fraction=0.025
    )
    return fig
