"""Anchors: the cell anchors of every level, their rounding, their tiling (tutorial 01).

Shapes used below:
    L: pyramid levels    A: anchors per cell (len(sizes) x len(aspect_ratios))
    Hl, Wl: height and width of level l
"""

import matplotlib.pyplot as plt
import numpy as np

from . import LEVEL_COLOURS, draw_boxes, show_image

_RATIO_STYLES = ("--", "-", ":", "-.")


def _cell_corner_axes(ax, extent_x, extent_y, title):
    """Axes centred on the cell corner (0, 0), y pointing down as in an image."""
    ax.set_xlim(*extent_x)
    ax.set_ylim(*extent_y)
    ax.set_aspect("equal")
    ax.set_xlabel("x relative to the cell corner (pixels)")
    ax.set_title(title)


def plot_cell_anchors(cell_anchors, sizes, aspect_ratios):
    """Every level's cell anchors, centred on the cell corner (0, 0).

    cell_anchors: list of L arrays (A, 4) float, x1 y1 x2 y2 relative to the cell corner,
        in the order AnchorGenerator makes them (docs/architecture.md, Anchors).
    sizes, aspect_ratios: per level, as given to AnchorGenerator (ratios h / w, outer).
    """
    fig, ax = plt.subplots(figsize=(7.5, 7))
    for level, (cells, level_sizes, ratios) in enumerate(
        zip(cell_anchors, sizes, aspect_ratios, strict=True)
    ):
        colour = LEVEL_COLOURS[level % len(LEVEL_COLOURS)]
        for k, box in enumerate(cells):
            r = k // len(level_sizes)  # ratios outer, sizes inner
            style = _RATIO_STYLES[r % len(_RATIO_STYLES)]
            label = f"P{level + 2}: size {level_sizes[0]}" if k == 0 else None
            draw_boxes(ax, box, color=colour, linestyle=style, label=label)
            if level == len(cell_anchors) - 1:  # the largest level has room for words
                w, h = box[2] - box[0], box[3] - box[1]
                ax.annotate(
                    f"h/w = {ratios[r]:g}\n{w:.0f} x {h:.0f}",
                    (box[2], box[1]),
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=8,
                    color=colour,
                )
    extent = max(np.abs(c).max() for c in cell_anchors) * 1.15
    _cell_corner_axes(
        ax,
        (-extent, extent),
        (extent, -extent),
        "Cell anchors of every level (dashed h/w = 0.5, solid 1, dotted 2)",
    )
    ax.axhline(0, color="0.8", linewidth=0.5)
    ax.axvline(0, color="0.8", linewidth=0.5)
    ax.set_ylabel("y relative to the cell corner (pixels)")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_p4_anchor_rounding(cells, exact_wh):
    """The P4 example: size 128 at ratios 0.5, 1, 2, and the rounding of the first.

    cells: (3, 4) float, P4's cell anchors (rounded), x1 y1 x2 y2 around the cell corner.
    exact_wh: (3, 2) float, the same anchors' unrounded (w, h) in pixels.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.2))
    for k, (box, colour) in enumerate(
        zip(cells, ("tab:blue", "tab:green", "tab:red"), strict=True)
    ):
        w, h = box[2] - box[0], box[3] - box[1]
        label = f"{w:.0f} x {h:.0f} (exact {exact_wh[k, 0]:.2f} x {exact_wh[k, 1]:.2f})"
        draw_boxes(left, box, color=colour, linewidth=2, label=label)
    _cell_corner_axes(  # room below for the legend
        left, (-110, 110), (160, -110), "P4 (stride 16), size 128: one anchor per aspect ratio"
    )
    left.set_ylabel("y (pixels)")
    left.legend(loc="lower right", fontsize=8)

    ew, eh = exact_wh[0]
    variants = [
        ("exact: 181.02 x 90.51", [-ew / 2, -eh / 2, ew / 2, eh / 2], "0.4", "-"),
        ("torchvision, round half-extents: 182 x 90", cells[0], "tab:blue", "-"),
        ("round w and h: 181 x 91", [-90.5, -45.5, 90.5, 45.5], "tab:orange", "--"),
    ]
    for label, box, colour, style in variants:
        draw_boxes(right, box, color=colour, linestyle=style, linewidth=2, label=label)
    _cell_corner_axes(
        right, (87.5, 92.5), (47.5, 42.5), "Zoom on the bottom-right corner of the h/w = 0.5 anchor"
    )
    right.grid(True, linewidth=0.4)
    right.set_xlabel("x (pixels)")
    right.set_ylabel("y (pixels)")
    right.legend(loc="lower left", fontsize=8)
    return fig


def plot_anchor_tiling(image, anchors, strides, location, counts=None, grid_levels=(1, 2)):
    """Anchors tiled over an image: the grids of P3 and P4, every level at one location.

    image: (3, H, W) float in [0, 1]. anchors: list of L arrays (Hl * Wl * A, 4) float,
        x1 y1 x2 y2 in image pixels, as AnchorGenerator.generate returns them.
    strides: L pairs (stride_h, stride_w). location: (y, x) pixel; the anchors of the
        cell corner nearest to it are drawn on every level.
    counts: optional {level name: number of anchors} for a bar chart beside the image.
    grid_levels: the two level indices (0 = P2) whose anchor centres are drawn as dots,
        finer first (on a large image P3's grid hides it: the tour draws coarser ones).
    """
    fig, axes = plt.subplots(1, 2 if counts else 1, figsize=(13 if counts else 7, 6))
    ax = axes[0] if counts else axes
    show_image(ax, image)
    y, x = location
    for level, (level_anchors, (sh, _)) in enumerate(zip(anchors, strides, strict=True)):
        colour = LEVEL_COLOURS[level % len(LEVEL_COLOURS)]
        corners = level_anchors[:, :2] + (level_anchors[:, 2:] - level_anchors[:, :2]) / 2
        if level in grid_levels:  # two grids: finer ones hide the image
            size = 2 if level == grid_levels[0] else 8
            ax.scatter(corners[:, 0], corners[:, 1], s=size, color=colour)
        nearest = np.argmin(np.abs(corners[:, 0] - x) + np.abs(corners[:, 1] - y))
        cell = np.flatnonzero((corners == corners[nearest]).all(axis=1))
        draw_boxes(ax, level_anchors[cell], color=colour, label=f"P{level + 2} (stride {sh})")
    ax.set_title(
        "Grids of P3 and P4 (dots); every level's anchors at one location\n"
        "(P5 and P6 anchors reach past this 256-pixel image)"
    )
    ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    if counts:
        bars = axes[1]
        values = list(counts.values())
        bars.bar(list(counts), values, color=LEVEL_COLOURS[: len(values)])
        for k, v in enumerate(values):
            bars.text(k, v, f"{v:,}", ha="center", va="bottom", fontsize=9)
        bars.set_ylabel("anchors")
        bars.set_title(f"Anchors per level, 800 x 1216 image: {sum(values):,} in all")
    return fig
