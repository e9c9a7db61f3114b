"""Backbone and FPN: the pyramid as a diagram, its activations, one top-down step (tutorial 05).

Shapes used below:
    C: channels of a backbone stage (C2..C5)    D: FPN channels (256)
    hl, wl: height and width of level l         H, W: the input image
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from . import show_image


def _activation(fmap):
    """(C, h, w) -> (h, w): mean absolute activation over channels, scaled to [0, 1]."""
    m = np.abs(np.asarray(fmap, dtype=np.float64)).mean(axis=0)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def plot_feature_pyramid(image, c_maps, p_maps, strides):
    """The image, the body's C2..C5 (top row) and the FPN's P2..P6 (bottom row).

    image: (3, H, W) float in [0, 1]. c_maps: 4 arrays (C_l, h_l, w_l) of one image;
    p_maps: 5 arrays (256, h_l, w_l). strides: 5 ints (4..64). Each map is the mean
    absolute activation over channels, drawn over the image's extent so that a cell
    covers the pixels it summarises; titles give channels x height x width.
    """
    fig, axes = plt.subplots(2, 6, figsize=(20, 6.6), constrained_layout=True)
    h, w = np.asarray(image).shape[1:]
    show_image(axes[0, 0], image, f"input image {h}x{w}")
    axes[1, 0].axis("off")
    axes[1, 0].text(
        0.02, 0.5,
        "mean |activation| over channels,\nscaled per map to [0, 1]\n\n"
        "top: ResNet stages (bottom-up)\nbottom: FPN outputs (256 channels,\n"
        "top-down + lateral)",
        fontsize=11, va="center",
    )  # fmt: skip
    for row, maps, name in ((0, c_maps, "C"), (1, p_maps, "P")):
        for level, fmap in enumerate(maps, start=2):
            ax = axes[row, level - 1]
            im = ax.imshow(_activation(fmap), extent=(0, w, h, 0), cmap="viridis", vmin=0, vmax=1)
            c, fh, fw = fmap.shape
            ax.set_title(f"{name}{level}: {c}x{fh}x{fw}, stride {strides[level - 2]}")
            ax.set_xlabel("x (pixels)")
            ax.set_yticks([])
    axes[0, 5].axis("off")  # the colour bar takes the free top-right cell
    fig.colorbar(im, ax=axes[0, 5], location="left", fraction=0.25, label="relative activation")
    return fig


def _map_box(ax, x, y, shape, scale, label, colour, side):
    """A feature map (C, h, w) as a box centred on (x, y), sized by ``scale`` per cell.

    The label goes beside the box (``side`` "left" for C, "right" for P) so that no arrow
    crosses it. Returns the box's height.
    """
    bh, bw = max(shape[1] * scale, 0.12), max(shape[2] * scale, 0.12)
    ax.add_patch(plt.Rectangle((x - bw / 2, y - bh / 2), bw, bh, fc=colour, ec="black"))
    sign = -1 if side == "left" else 1
    ax.text(x + sign * (bw / 2 + 0.12), y, label, ha="right" if sign < 0 else "left",
            va="center", fontsize=9.5)  # fmt: skip
    return bh


def _arrow(ax, x0, y0, x1, y1, text=None, colour="black", offset=(0.0, 0.12)):
    """An arrow from (x0, y0) to (x1, y1), its text by its middle moved by ``offset``."""
    ax.annotate("", (x1, y1), (x0, y0),
                arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.6})  # fmt: skip
    if text:
        ax.text((x0 + x1) / 2 + offset[0], (y0 + y1) / 2 + offset[1], text, ha="center",
                va="center", fontsize=9, color=colour)  # fmt: skip


def _map_label(name, shape, stride):
    return f"{name}: {shape[0]}x{shape[1]}x{shape[2]}\nstride {stride}"


def plot_fpn_pathways(c_shapes, p_shapes, strides, image_hw):
    """The FPN drawn as a diagram: bottom-up C2..C5, laterals, top-down sums, P2..P6.

    c_shapes: 4 tuples (C, h, w); p_shapes: 5 tuples (D, h, w); strides: 5 ints;
    image_hw: (H, W). Box sizes are proportional to the maps' spatial sizes.
    """
    fig, ax = plt.subplots(figsize=(13, 9))
    ax.set_xlim(-2.6, 13.4)
    ax.set_ylim(-2.6, 11.0)
    ax.axis("off")
    scale = 1.5 / max(c_shapes[0][1:])
    ys = [1.4, 4.2, 6.6, 8.6, 10.2]
    h, w = image_hw
    ih = 1.5 * h / w
    ax.add_patch(plt.Rectangle((0.25, -2.3), 1.5, ih, fc="lightgrey", ec="black"))
    ax.text(1.0, -2.3 + ih / 2, f"image\n3x{h}x{w}", ha="center", va="center", fontsize=10)
    top_of_below = -2.3 + ih
    for i, (c, p) in enumerate(zip(c_shapes, p_shapes, strict=False)):
        level, y = i + 2, ys[i]
        bh = _map_box(ax, 1.0, y, c, scale, _map_label(f"C{level}", c, strides[i]), "tab:blue",
                      "left")  # fmt: skip
        stage = "conv1, max pool, layer1" if i == 0 else f"layer{level - 1}"
        _arrow(ax, 1.0, top_of_below + 0.05, 1.0, y - bh / 2 - 0.05, stage, "tab:blue",
               (0.3 + 0.055 * len(stage), 0))  # fmt: skip
        top_of_below = y + bh / 2
        _arrow(ax, 2.4, y, 5.6, y, "lateral 1x1 conv -> 256 ch", "tab:green")
        ax.add_patch(plt.Circle((5.9, y), 0.25, fc="white", ec="black"))
        ax.text(5.9, y, "+" if i < 3 else "=", ha="center", va="center", fontsize=14)
        _arrow(ax, 6.2, y, 8.9, y, "3x3 conv", "tab:orange")
        _map_box(ax, 9.9, y, p, scale, _map_label(f"P{level}", p, strides[i]), "tab:orange",
                 "right")  # fmt: skip
        if i < 3:
            above = p_shapes[i + 1]
            _arrow(ax, 5.9, ys[i + 1] - 0.28, 5.9, y + 0.28,
                   f"nearest up\n{above[1]}x{above[2]} -> {c[1]}x{c[2]}", "tab:red",
                   (1.0, 0.0))  # fmt: skip
    p6 = p_shapes[4]
    _map_box(ax, 9.9, ys[4], p6, scale, _map_label("P6", p6, strides[4]), "tab:purple", "right")
    _arrow(ax, 9.9, ys[3] + 0.15, 9.9, ys[4] - 0.1, "max pool k1 s2", "tab:purple", (-0.9, 0))
    for x, text in ((1.0, "bottom-up (ResNet)"), (5.9, "top-down pathway"),
                    (9.9, "outputs (RPN, RoI heads)")):  # fmt: skip
        ax.text(x, 10.9, text, ha="center", fontsize=12, weight="bold")
    return fig


def plot_top_down_step(coarse, upsampled, lateral, merged, output, level):
    """One top-down step of the FPN at level ``level`` (e.g. 4: P5's running sum -> P4).

    coarse: (D, h', w') running sum of the level above; upsampled: (D, h, w) its nearest
    upsampling to the lateral's size; lateral: (D, h, w) the 1x1 conv of C_level;
    merged = lateral + upsampled; output: (D, h, w) P_level after the 3x3 conv. Each
    panel is channel 0 (maps share one colour scale per panel; grid = one cell).
    """
    panels = [
        (coarse, f"running sum from level {level + 1}\n{coarse.shape[1]}x{coarse.shape[2]}"),
        (upsampled, f"nearest upsampling to\n{upsampled.shape[1]}x{upsampled.shape[2]}"),
        (lateral, f"lateral: 1x1 conv of C{level}\n{lateral.shape[1]}x{lateral.shape[2]}"),
        (merged, "sum = lateral + upsampled"),
        (output, f"P{level} = 3x3 conv of the sum"),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(19, 4.4), constrained_layout=True)
    for ax, (fmap, title) in zip(axes, panels, strict=True):
        m = fmap[0]
        im = ax.imshow(m, cmap="coolwarm", vmin=-np.abs(m).max(), vmax=np.abs(m).max())
        ax.set_xticks(np.arange(-0.5, m.shape[1], 1), minor=True)
        ax.set_yticks(np.arange(-0.5, m.shape[0], 1), minor=True)
        ax.grid(which="minor", color="white", lw=0.4)
        ax.tick_params(which="minor", length=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("column")
        ax.set_ylabel("row")
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.suptitle(f"FPN top-down step into P{level} (channel 0)")
    return fig
