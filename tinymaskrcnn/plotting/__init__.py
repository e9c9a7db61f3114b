"""Plots of every stage, one module per stage, and the pieces they share.

``plotting.anchors``, ``.matching``, ``.boxes``, ``.roi_ops``, ``.fpn``, ``.rpn``,
``.masks``, ``.detections``, ``.training`` and ``.roi_variants`` (RoIAlign across
frameworks) each draw one stage from plain arrays
(documented like the stage modules) and return a matplotlib figure; ``save(fig, path)``
writes it as a PNG. This module holds what they share: the palette, the image and box
drawing, and the legend placement.

No matplotlib backend is chosen here: a notebook keeps its inline one, and the scripts
that only write files (the tutorials, ``tinymaskrcnn tour``) call
``matplotlib.use("Agg")`` themselves.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from matplotlib.patches import Rectangle

from ..atomic_file import write_atomically

# The palette. Pyramid levels keep their colour in every figure (P2 blue ... P6 purple).
LEVEL_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
# Anchor labels look the same wherever anchors are labelled (tutorials 02, 06, the tour):
# ``draw_boxes(ax, boxes, **POSITIVE)``. The many negatives and ignored anchors are thin
# and faint so that the image shows through; ground truth is white with a black rim, which
# shows on any image.
POSITIVE = {"color": "lime", "linewidth": 1.5, "halo": True}
NEGATIVE = {"color": "tab:blue", "linewidth": 0.8, "alpha": 0.6}
IGNORED = {"color": "gold", "linewidth": 1.0, "linestyle": "--", "alpha": 0.8}
GROUND_TRUTH = {"color": "white", "linewidth": 2.0, "linestyle": "--", "halo": True}


def save(fig, path) -> str:
    """Write ``fig`` to ``path`` (PNG) atomically: a temporary file, then a rename."""
    try:
        return write_atomically(
            path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        )
    finally:
        plt.close(fig)


def show_image(ax, image, title=None, dim=0.0):
    """Draw an image with pixel (i, j) covering [j, j+1) x [i, i+1).

    That is the pixel frame every box is in (docs/architecture.md, Frames and pixels), so
    a box drawn with ``draw_boxes`` lands on the pixels it covers.
    image: (3, H, W) or (H, W, 3) float in [0, 1]. dim: blend towards white (0 to 1) so
    that boxes drawn on top stand out.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3:
        image = image.transpose(1, 2, 0)
    image = image * (1 - dim) + dim
    h, w = image.shape[:2]
    ax.imshow(np.clip(image, 0, 1), extent=(0, w, h, 0), interpolation="nearest")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    if title:
        ax.set_title(title)


def draw_boxes(
    ax, boxes, color="tab:red", linewidth=1.5, linestyle="-", alpha=1.0, label=None, halo=False
):
    """Outline boxes (N, 4) or (4,) x1 y1 x2 y2 in the axes' frame; ``label`` names them once.

    halo: a black rim around the line, which keeps white boxes visible on any image.
    """
    effects = [patheffects.withStroke(linewidth=linewidth + 2, foreground="black")] if halo else []
    for k, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=float).reshape(-1, 4)):
        ax.add_patch(
            Rectangle(
                (x1, y1),
                x2 - x1,
                y2 - y1,
                fill=False,
                edgecolor=color,
                linewidth=linewidth,
                linestyle=linestyle,
                alpha=alpha,
                label=label if k == 0 else None,
                path_effects=effects,
            )
        )


def draw_contour(ax, mask, color="white", width=1.5):
    """The 0.5 level of a (H, W) mask or probability map, over an image from ``show_image``.

    The contour is traced through pixel centres (j + 0.5, i + 0.5), the same frame as the
    image, so the outline runs between the pixels inside and outside.
    """
    h, w = np.shape(mask)
    ax.contour(np.arange(w) + 0.5, np.arange(h) + 0.5, mask, levels=[0.5], colors=color,
               linewidths=width)  # fmt: skip


def write_values(ax, values, fmt, dark, **text):
    """Write each cell's value at its centre (column j, row i) of an ``imshow``-ed grid.

    values: (H, W) float; fmt: a format spec such as ".2f"; dark: (H, W) bool, True where
    the cell's colour is dark and the text must be white. ``text``: more ``ax.text``
    options (fontsize, fontweight).
    """
    for (i, j), value in np.ndenumerate(values):
        colour = "white" if dark[i, j] else "black"
        ax.text(j, i, format(value, fmt), ha="center", va="center", color=colour, **text)


def key(label, color, **style):
    """A legend entry for something drawn without a label (``style``: Line2D options)."""
    return plt.Line2D([], [], color=color, label=label, **style)


def legend_below(ax, handles=None, ncol=2, y=-0.08, fontsize=8):
    """The legend under the axes, centred, so that it hides nothing drawn."""
    ax.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, y), ncol=ncol, fontsize=fontsize
    )
