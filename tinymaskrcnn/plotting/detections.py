"""Detections: boxes, masks, classes and scores over images (tutorial 08, tour, predict).

Shapes used below:
    H, W: the image    D: detections of one image    G: ground-truth boxes
A model output (one per image) is a dict of boxes (D, 4) float x1 y1 x2 y2 pixels,
labels (D,) int, scores (D,) float in [0, 1] and masks (D, 1, H, W) float probabilities.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb

from . import draw_boxes, draw_contour, key, show_image

_CLASS_COLOURS = ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def _class_colour(label):
    return _CLASS_COLOURS[int(label) % len(_CLASS_COLOURS)]


def _count(detections, score_thresh):
    return int((np.asarray(detections["scores"]) >= score_thresh).sum())


def draw_detections(ax, image, detections, class_names, score_thresh=0.5, title=None):
    """An image with its detections: mask tinted, box outlined, "name score" above.

    image: (3, H, W) float in [0, 1]. detections: one image's model output; masks are
    optional. Only detections scoring at least ``score_thresh`` are drawn; masks are cut
    at probability 0.5, as evaluation does.
    """
    image = np.asarray(image, dtype=np.float32)
    tinted = image.transpose(1, 2, 0).copy()
    keep = np.flatnonzero(np.asarray(detections["scores"]) >= score_thresh)
    masks = detections.get("masks")
    if masks is not None:
        for i in keep:
            inside = masks[i, 0] > 0.5
            colour = np.array(to_rgb(_class_colour(detections["labels"][i])))
            tinted[inside] = 0.45 * tinted[inside] + 0.55 * colour
    show_image(ax, tinted, title)
    h = image.shape[1]
    for i in keep:
        label = int(detections["labels"][i])
        colour = _class_colour(label)
        if masks is not None and (masks[i, 0] > 0.5).any():
            # The outline keeps a mask visible where its tint matches the background.
            draw_contour(ax, masks[i, 0], "black", 2.6)
            draw_contour(ax, masks[i, 0], "white", 1.2)
        x1, y1 = detections["boxes"][i][:2]
        draw_boxes(ax, detections["boxes"][i], color=colour, linewidth=1.8, halo=True)
        name = class_names[label] if label < len(class_names) else f"class {label}"
        above = y1 > 0.08 * h  # else inside the box: above it would cover the title
        tag = {"facecolor": colour, "edgecolor": "none", "pad": 1.0, "alpha": 0.9}
        ax.text(x1, y1 - 1 if above else y1 + 1, f"{name} {detections['scores'][i]:.2f}",
                color="white", fontsize=7, va="bottom" if above else "top", bbox=tag)  # fmt: skip


def plot_detections(image, detections, class_names, score_thresh=0.5, title=None, inches=5.0):
    """One image with its detections (``draw_detections``) on a new figure.

    image: (3, H, W) float in [0, 1]; detections: its model output. inches: the figure's
    longer side (at least 4 inches each way).
    """
    h, w = np.asarray(image).shape[1:]
    long = max(h, w)
    fig, ax = plt.subplots(figsize=(max(4.0, inches * w / long), max(4.0, inches * h / long)))
    title = title or f"{_count(detections, score_thresh)} detections with score >= {score_thresh:g}"
    draw_detections(ax, image, detections, class_names, score_thresh, title)
    return fig


def plot_detection_rows(images, rows, class_names, score_thresh=0.5, truths=None, title=None):
    """Detections of one or more models on the same images, one row per model.

    images: list of (3, H, W) float in [0, 1]. rows: list of (name, detections), the
    detections a list with one model output per image; a name replaces the y label of
    its row (None keeps it). truths: optional list with one target per image, boxes
    (G, 4) x1 y1 x2 y2 pixels, drawn dashed. title: the figure's title (a default names
    the thresholds).
    """
    n = len(images)
    height = 3.2 * len(rows) + (0.7 if truths is not None else 0.0)  # room for the legend
    fig, axes = plt.subplots(len(rows), n, figsize=(3.0 * n, height), squeeze=False)
    for r, (name, dets) in enumerate(rows):
        for k, ax in enumerate(axes[r]):
            found = f"{_count(dets[k], score_thresh)} found"
            if truths is not None:
                g = len(truths[k]["boxes"])
                found += f", {g} object{'s' if g != 1 else ''}"
            draw_detections(ax, images[k], dets[k], class_names, score_thresh, found)
            if truths is not None:
                draw_boxes(ax, truths[k]["boxes"], color="black", linewidth=1.2, linestyle="--")
            if len(rows) > 1:  # x labels would run into the titles of the row below
                ax.set_xlabel("")
            if k or name is not None:
                ax.set_ylabel(name if k == 0 else "", fontsize=10)
    if truths is not None:
        handles = [
            key("detection: box, mask (tint), class and score", "tab:blue", lw=1.8),
            key("ground-truth box", "black", lw=1.2, ls="--"),
        ]
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=2,
                   fontsize=9)  # fmt: skip
    fig.suptitle(
        title or f"detections with score >= {score_thresh:g} (masks cut at probability 0.5)"
    )
    fig.tight_layout()
    return fig
