"""Every plot the tutorials and the tour draw.

Each function takes plain arrays (documented like the stage modules), draws on a new
figure or on a given ``ax``, and ``save(fig, path)`` writes the PNG. Matplotlib runs
with the non-interactive Agg backend so that tutorials work on machines with no screen.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402,F401

from .atomic_file import write_atomically  # noqa: E402


def save(fig, path) -> str:
    """Write ``fig`` to ``path`` (PNG) atomically: a temporary file, then a rename."""
    try:
        return write_atomically(
            path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        )
    finally:
        plt.close(fig)


# --- anchors, IoU matching, box coding (tutorials 01-03) ---------------------------

_LEVEL_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
_RATIO_STYLES = ("--", "-", ":", "-.")


def show_image(ax, image, title=None, dim=0.0):
    """Draw an image with pixel (i, j) covering [j, j+1) x [i, i+1)
    (docs/architecture.md, Frames and pixels).

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
    """Outline boxes (N, 4) x1 y1 x2 y2 in the axes' frame; ``label`` names them once.

    halo: a black rim around the line, which keeps white boxes visible on any image.
    """
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

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


def plot_cell_anchors(cell_anchors, sizes, aspect_ratios):
    """Every level's cell anchors, centred on the cell corner (0, 0).

    cell_anchors: list per level of (A, 4) x1 y1 x2 y2 relative to the cell corner.
    sizes, aspect_ratios: per level, as given to AnchorGenerator (ratios outer).
    """
    fig, ax = plt.subplots(figsize=(7.5, 7))
    for level, (cells, level_sizes, ratios) in enumerate(
        zip(cell_anchors, sizes, aspect_ratios, strict=True)
    ):
        colour = _LEVEL_COLOURS[level % len(_LEVEL_COLOURS)]
        for k, box in enumerate(cells):
            ratio = ratios[k // len(level_sizes)]
            draw_boxes(
                ax,
                box,
                color=colour,
                linestyle=_RATIO_STYLES[(k // len(level_sizes)) % len(_RATIO_STYLES)],
                label=f"P{level + 2}: size {level_sizes[0]}" if k == 0 else None,
            )
            if level == len(cell_anchors) - 1:
                w, h = box[2] - box[0], box[3] - box[1]
                ax.annotate(
                    f"h/w = {ratio:g}\n{w:.0f} x {h:.0f}",
                    (box[2], box[1]),
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=8,
                    color=colour,
                )
    extent = max(np.abs(c).max() for c in cell_anchors) * 1.15
    ax.set_xlim(-extent, extent)
    ax.set_ylim(extent, -extent)
    ax.set_aspect("equal")
    ax.axhline(0, color="0.8", linewidth=0.5)
    ax.axvline(0, color="0.8", linewidth=0.5)
    ax.set_xlabel("x relative to the cell corner (pixels)")
    ax.set_ylabel("y relative to the cell corner (pixels)")
    ax.set_title("Cell anchors of every level (dashed h/w = 0.5, solid 1, dotted 2)")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_p4_anchor_rounding(cells, exact_wh):
    """The P4 example: size 128 at ratios 0.5, 1, 2, and the rounding of the first.

    cells: (3, 4) rounded cell anchors of P4. exact_wh: (3, 2) unrounded (w, h).
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.2))
    colours = ("tab:blue", "tab:green", "tab:red")
    for k, (box, colour) in enumerate(zip(cells, colours, strict=True)):
        w, h = box[2] - box[0], box[3] - box[1]
        label = f"{w:.0f} x {h:.0f} (exact {exact_wh[k, 0]:.2f} x {exact_wh[k, 1]:.2f})"
        draw_boxes(left, box, color=colour, linewidth=2, label=label)
    left.set_xlim(-110, 110)
    left.set_ylim(160, -110)  # room below for the legend
    left.set_aspect("equal")
    left.set_title("P4 (stride 16), size 128: one anchor per aspect ratio")
    left.set_xlabel("x relative to the cell corner (pixels)")
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
    right.set_xlim(87.5, 92.5)
    right.set_ylim(47.5, 42.5)
    right.set_aspect("equal")
    right.grid(True, linewidth=0.4)
    right.set_title("Zoom on the bottom-right corner of the h/w = 0.5 anchor")
    right.set_xlabel("x (pixels)")
    right.set_ylabel("y (pixels)")
    right.legend(loc="lower left", fontsize=8)
    return fig


def plot_anchor_tiling(image, anchors, strides, location, counts=None):
    """Anchors tiled over an image.

    image: (3, H, W) in [0, 1]. anchors: list per level of (Hl * Wl * A, 4), image pixels.
    strides: per level (stride_h, stride_w). location: (y, x) pixel; the anchors of the
    cell corner nearest to it are drawn on every level.
    counts: optional {label: number of anchors} for a bar chart beside the image.
    """
    fig, axes = plt.subplots(1, 2 if counts else 1, figsize=(13 if counts else 7, 6))
    ax = axes[0] if counts else axes
    show_image(ax, image)
    y, x = location
    for level, (level_anchors, (sh, _)) in enumerate(zip(anchors, strides, strict=True)):
        colour = _LEVEL_COLOURS[level % len(_LEVEL_COLOURS)]
        corners = level_anchors[:, :2] + (level_anchors[:, 2:] - level_anchors[:, :2]) / 2
        if level in (1, 2):  # the grids of P3 and P4: finer ones hide the image
            ax.scatter(corners[:, 0], corners[:, 1], s=2 if level == 1 else 8, color=colour)
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
        names = list(counts)
        values = [counts[n] for n in names]
        bars.bar(names, values, color=_LEVEL_COLOURS[: len(names)])
        for k, v in enumerate(values):
            bars.text(k, v, f"{v:,}", ha="center", va="bottom", fontsize=9)
        bars.set_ylabel("anchors")
        bars.set_title(f"Anchors per level, 800 x 1216 image: {sum(values):,} in all")
    return fig


def plot_iou_matrix(iou, row_names, col_names, title):
    """A heat map of an IoU matrix (G, N) with its values written in each cell."""
    g, n = iou.shape
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * n + 2), max(2.5, 0.5 * g + 1.5)))
    im = ax.imshow(iou, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(g):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{iou[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if iou[i, j] < 0.6 else "black",
            )
    ax.set_xticks(range(n), col_names, rotation=90, fontsize=7)
    ax.set_yticks(range(g), row_names, fontsize=8)
    ax.set_xlabel("anchor (index in the concatenated anchor list)")
    ax.set_ylabel("ground-truth box")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="IoU", fraction=0.03)
    return fig


def plot_anchor_labels(image, gt_boxes, anchors, matches, title, rng, max_shown=60):
    """Anchors labelled by the Matcher: positive, and samples of ignored and negative.

    image: (3, H, W). gt_boxes: (G, 4). anchors: (N, 4). matches: (N,) Matcher output
    (>= 0 positive, -1 negative, -2 ignored). rng: draws the ignored and negative anchors
    shown (``max_shown`` of each; all of them would hide the image).
    """
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    show_image(ax, image, dim=0.45)
    for code, colour, style, name in (
        (-1, "tab:blue", "-", "negative (IoU < low)"),
        (-2, "tab:orange", "--", "ignored (low <= IoU < high)"),
    ):
        members = np.flatnonzero(matches == code)
        shown = rng.choice(members, size=min(max_shown, members.size), replace=False)
        draw_boxes(
            ax,
            anchors[shown],
            color=colour,
            linewidth=0.8,
            linestyle=style,
            alpha=0.6,
            label=f"{name}: {members.size:,} ({shown.size} shown)",
        )
    positive = np.flatnonzero(matches >= 0)
    draw_boxes(
        ax,
        anchors[positive],
        color="lime",
        linewidth=1.5,
        halo=True,
        label=f"positive: {positive.size}",
    )
    draw_boxes(ax, gt_boxes, color="white", linewidth=2.5, halo=True, label="ground truth")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=8)
    return fig


def plot_low_quality_rescue(image, gt_boxes, anchors, rescued, best_iou, title):
    """The anchors that are positive only thanks to the low-quality rule.

    rescued: (N,) bool. best_iou: (N,) each anchor's best IoU with any gt.
    """
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    show_image(ax, image, dim=0.45)
    draw_boxes(ax, gt_boxes, color="white", linewidth=2.5, halo=True, label="ground truth")
    idx = np.flatnonzero(rescued)
    values = ", ".join(f"{v:.2f}" for v in np.unique(np.round(best_iou[idx], 2)))
    draw_boxes(
        ax,
        anchors[idx],
        color="magenta",
        linewidth=1.8,
        halo=True,
        label=f"rescued: {idx.size} anchors, best IoU {values}",
    )
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=8)
    return fig


def plot_box_deltas(anchor, gt, deltas_by_weights):
    """One anchor, its target box and their deltas for each weight set.

    anchor, gt: (4,) x1 y1 x2 y2. deltas_by_weights: {label: (4,) dx dy dw dh}.
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
    ax.text(
        0.5,
        -0.14,
        "\n".join(lines),
        transform=ax.transAxes,
        fontsize=8,
        family="monospace",
        ha="center",
        va="top",
    )
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
    """Decoded width against dw, with and without the clamp at ``clip``."""
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
    """Proposals before and after NMS, coloured by score.

    boxes: (N, 4) image pixels. scores: (N,) in [0, 1]. keep: (K,) indices NMS kept.
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
            draw_boxes(ax, gt_boxes, color="white", linewidth=3, halo=True, label="ground truth")
        for k in idx:  # lowest score first, so the best are drawn on top
            draw_boxes(ax, boxes[k], color=cmap(norm(float(scores[k]))), linewidth=1.2)
        if gt_boxes is not None:
            ax.legend(loc="upper right", fontsize=8)
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=norm)
    fig.colorbar(mappable, ax=axes, label="score", fraction=0.025)
    return fig


# --- RoIPool vs RoIAlign (tutorial 04) ---------------------------------------------
# These plots work in RoIAlign's cell-index frame: cell (i, j) is a unit square centred
# on (x=j, y=i), which is where roi_align_sampling_points puts a sample that reads that
# cell alone. A box in the pixel frame (docs/architecture.md, Frames and pixels) is drawn
# shifted by -0.5.

_BIN_COLOURS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:purple",
    "tab:red",
    "tab:cyan",
    "tab:olive",
    "tab:pink",
    "tab:brown",
)


def draw_feature_grid(ax, fmap, title=None, show_values=True, cmap="Greys"):
    """A (H, W) feature map as a grid of cells, optionally with each cell's value.

    fmap: (H, W) float, one channel of a feature map.
    """
    h, w = fmap.shape
    ax.imshow(
        fmap, cmap=cmap, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest", alpha=0.35
    )
    ax.set_xticks(np.arange(w))
    ax.set_yticks(np.arange(h))
    ax.set_xticks(np.arange(w + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(h + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.6", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    if show_values:
        for i in range(h):
            for j in range(w):
                # Near the top of the cell: its centre is where sample lines end.
                ax.text(
                    j,
                    i - 0.3,
                    f"{fmap[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="0.2",
                )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xlabel("x (feature cells)")
    ax.set_ylabel("y (feature cells)")
    if title:
        ax.set_title(title)


def _box(ax, x1, y1, x2, y2, **style):
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, **style))


def _draw_output(ax, values, title):
    ph, pw = values.shape
    ax.imshow(values, cmap="Blues", vmin=0, vmax=1, extent=(-0.5, pw - 0.5, ph - 0.5, -0.5))
    for i in range(ph):
        for j in range(pw):
            colour = "white" if values[i, j] > 0.6 else "black"
            ax.text(
                j,
                i,
                f"{values[i, j]:.3f}",
                ha="center",
                va="center",
                fontsize=11,
                color=colour,
                fontweight="bold",
            )
    ax.set_xticks(range(pw))
    ax.set_yticks(range(ph))
    ax.set_xlabel("output column")
    ax.set_ylabel("output row")
    ax.set_title(title)


def plot_roi_pool(fmap, roi_box, bins, out, argmax):
    """RoIPool on one channel: the RoI, its rounding, the rounded bins and their maxima.

    fmap: (H, W) feature map; roi_box: (4,) x1, y1, x2, y2 in the pixel frame (scale 1).
    bins: (h_start (ph,), h_end (ph,), w_start (pw,), w_end (pw,)) cells, end exclusive.
    out: (ph, pw) pooled values; argmax: (ph, pw) flat index y * W + x of each winner.
    """
    h, w = fmap.shape
    fig, (ax, ax_out) = plt.subplots(
        1, 2, figsize=(12, 5.6), gridspec_kw={"width_ratios": [1.6, 1]}
    )
    draw_feature_grid(ax, fmap, "RoIPool: the RoI is rounded, then each bin is rounded")
    x1, y1, x2, y2 = np.asarray(roi_box) - 0.5
    _box(ax, x1, y1, x2, y2, edgecolor="red", linestyle="--", linewidth=2)
    h_start, h_end, w_start, w_end = bins
    handles = [plt.Line2D([], [], color="red", linestyle="--", lw=2, label="RoI as given")]
    for i in range(len(h_start)):
        for j in range(len(w_start)):
            colour = _BIN_COLOURS[(i * len(w_start) + j) % len(_BIN_COLOURS)]
            inset = 0.06 * (1 + i * len(w_start) + j)  # overlapping bins stay visible
            _box(
                ax,
                w_start[j] - 0.5 + inset,
                h_start[i] - 0.5 + inset,
                w_end[j] - 0.5 - inset,
                h_end[i] - 0.5 - inset,
                edgecolor=colour,
                linewidth=2,
            )
            wy, wx = divmod(int(argmax[i, j]), w)
            # Shrinking radii keep the circles of bins that share a winner apart.
            radius = 0.45 - 0.07 * (i * len(w_start) + j)
            ax.add_patch(plt.Circle((wx, wy), radius, fill=False, edgecolor=colour, linewidth=2.5))
            handles.append(
                plt.Line2D(
                    [],
                    [],
                    color=colour,
                    lw=2,
                    label=f"bin ({i},{j}): rows {h_start[i]}-{h_end[i] - 1}, "
                    f"cols {w_start[j]}-{w_end[j] - 1}",
                )
            )
    handles.append(
        plt.Line2D([], [], color="k", marker="o", mfc="none", ls="", ms=10, label="max of the bin")
    )
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, -0.12), ncol=2, fontsize=8)
    _draw_output(ax_out, out, "RoIPool output (max per bin)")
    return fig


def plot_roi_align_samples(fmap, roi_box, points, index, weight, out, avg_max=None):
    """RoIAlign on one channel: exact bins, their sample points, each point's 4 neighbours.

    fmap: (H, W); roi_box: (4,) x1, y1, x2, y2 in the cell-index frame (as sampled).
    points: (ph, pw, gh, gw, 2) sample (x, y), cell-index frame.
    index, weight: (ph, pw, gh, gw, 4) from bilinear_neighbours.
    out: (ph, pw) the output ("avg"); avg_max: optional (ph, pw) "max" output.
    """
    h, w = fmap.shape
    ph, pw = points.shape[:2]
    ncols = 3 if avg_max is not None else 2
    fig, axes = plt.subplots(
        1,
        ncols,
        figsize=(6.5 + 3.6 * (ncols - 1), 5.6),
        gridspec_kw={"width_ratios": [1.8] + [1] * (ncols - 1)},
    )
    ax = axes[0]
    draw_feature_grid(ax, fmap, "RoIAlign (aligned=True): exact bins, 2x2 samples per bin")
    x1, y1, x2, y2 = roi_box
    _box(ax, x1, y1, x2, y2, edgecolor="red", linewidth=2)
    for i in range(1, ph):
        ax.plot([x1, x2], [y1 + i * (y2 - y1) / ph] * 2, color="red", lw=1, ls=":")
    for j in range(1, pw):
        ax.plot([x1 + j * (x2 - x1) / pw] * 2, [y1, y2], color="red", lw=1, ls=":")
    for i in range(ph):
        for j in range(pw):
            colour = _BIN_COLOURS[(i * pw + j) % len(_BIN_COLOURS)]
            p = points[i, j].reshape(-1, 2)
            for (px, py), cells, ws in zip(
                p, index[i, j].reshape(-1, 4), weight[i, j].reshape(-1, 4), strict=True
            ):
                for cell, wgt in zip(cells, ws, strict=True):
                    if wgt > 0:
                        cy, cx = divmod(int(cell), w)
                        ax.plot([px, cx], [py, cy], color=colour, lw=0.5 + 2.5 * wgt, alpha=0.7)
            ax.scatter(p[:, 0], p[:, 1], s=40, color=colour, edgecolor="k", zorder=3)
    ax.legend(
        handles=[
            plt.Line2D([], [], color="red", lw=2, label="RoI and its bins (no rounding)"),
            plt.Line2D([], [], marker="o", color="tab:blue", mec="k", ls="", label="sample point"),
            plt.Line2D(
                [],
                [],
                color="tab:blue",
                lw=2,
                label="to its 4 neighbour cells (width ~ bilinear weight)",
            ),
        ],
        loc="upper left",
        bbox_to_anchor=(0, -0.1),
        fontsize=8,
    )
    _draw_output(axes[1], out, "RoIAlign output (average of 4)")
    if avg_max is not None:
        _draw_output(axes[2], avg_max, 'reduction="max" (max of 4)')
    return fig


def plot_aligned_vs_legacy(fmap, roi_box_pixels, points_legacy, points_aligned):
    """Where aligned=False and aligned=True put the samples of the same RoI.

    fmap: (H, W); roi_box_pixels: (4,) x1, y1, x2, y2, pixel frame (scale 1).
    points_*: (ph, pw, gh, gw, 2) from roi_align_sampling_points, cell-index frame.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    x1, y1, x2, y2 = np.asarray(roi_box_pixels) - 0.5
    for ax, points, name in zip(
        axes,
        (points_legacy, points_aligned),
        ("aligned=False (legacy, torchvision's default)", "aligned=True (half-pixel correction)"),
        strict=True,
    ):
        draw_feature_grid(ax, fmap, name, show_values=False)
        _box(ax, x1, y1, x2, y2, edgecolor="red", linewidth=2)
        p = points.reshape(-1, 2)
        ax.scatter(p[:, 0], p[:, 1], s=36, color="tab:blue", edgecolor="k", zorder=3)
        centre = p.mean(axis=0)
        ax.plot(*centre, marker="x", color="tab:blue", ms=12, mew=3)
        ax.plot((x1 + x2) / 2, (y1 + y2) / 2, marker="+", color="red", ms=16, mew=2)
    axes[0].legend(
        handles=[
            plt.Line2D([], [], color="red", lw=2, label="RoI (pixel frame)"),
            plt.Line2D([], [], marker="+", color="red", ls="", ms=12, label="RoI centre"),
            plt.Line2D([], [], marker="o", color="tab:blue", mec="k", ls="", label="sample"),
            plt.Line2D([], [], marker="x", color="tab:blue", ls="", ms=10, label="mean of samples"),
        ],
        loc="upper left",
        bbox_to_anchor=(0, -0.1),
        ncol=2,
        fontsize=8,
    )
    return fig


def plot_adaptive_sampling(fmap_shape, roi_box, points, title):
    """The sample grid of a large RoI under sampling_ratio <= 0 (ceil(size / bins) per axis).

    fmap_shape: (H, W); roi_box: (4,) cell-index frame; points: (ph, pw, gh, gw, 2).
    """
    h, w = fmap_shape
    fig, ax = plt.subplots(figsize=(7.5, 7.5 * h / w + 0.8))
    draw_feature_grid(ax, np.zeros((h, w)), title, show_values=False)
    ph, pw = points.shape[:2]
    x1, y1, x2, y2 = roi_box
    _box(ax, x1, y1, x2, y2, edgecolor="red", linewidth=2)
    for i in range(ph):
        for j in range(pw):
            p = points[i, j].reshape(-1, 2)
            ax.scatter(p[:, 0], p[:, 1], s=14, color=_BIN_COLOURS[(i * pw + j) % 9])
    for i in range(1, ph):
        ax.plot([x1, x2], [y1 + i * (y2 - y1) / ph] * 2, color="red", lw=1, ls=":")
    for j in range(1, pw):
        ax.plot([x1 + j * (x2 - x1) / pw] * 2, [y1, y2], color="red", lw=1, ls=":")
    return fig


def plot_crop_and_resize_vs_roi_align(fmap_shape, roi_box, tf_points, align_points):
    """TensorFlow's crop_and_resize samples next to RoIAlign's for the same box.

    fmap_shape: (H, W); roi_box: (4,) cell-index frame.
    tf_points: (ch, cw, 2); align_points: (ph, pw, gh, gw, 2), cell-index frame.
    """
    h, w = fmap_shape
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    x1, y1, x2, y2 = roi_box
    for ax, p, title in zip(
        axes,
        (tf_points, align_points),
        (
            f"crop_and_resize to {tf_points.shape[0]}x{tf_points.shape[1]}: "
            "corners sampled, no bins",
            "RoIAlign 2x2 bins x 2x2 samples: sub-cell centres",
        ),
        strict=True,
    ):
        draw_feature_grid(ax, np.zeros((h, w)), title, show_values=False)
        _box(ax, x1, y1, x2, y2, edgecolor="red", linewidth=2)
        p = p.reshape(-1, 2)
        ax.scatter(p[:, 0], p[:, 1], s=40, color="tab:green", edgecolor="k", zorder=3)
    return fig


def plot_quantisation_sweep(shift, edge_error, pool_error, align_error, stride):
    """RoIPool's quantisation error as a RoI slides by sub-cell steps, next to RoIAlign's.

    shift: (S,) RoI offset in image pixels; edge_error: (S,) RoIPool's rounded left edge
    minus the true one; pool_error, align_error: (S,) output of one bin minus its exact
    value (on a ramp map whose value is x in image pixels); all in image pixels.
    stride: image pixels per feature cell.
    """
    fig, (ax_edge, ax_value) = plt.subplots(1, 2, figsize=(13, 4.8))
    ax_edge.plot(shift, edge_error, color="tab:red", label="RoIPool (rounded to a cell)")
    ax_edge.plot(shift, np.zeros_like(shift), color="tab:blue", label="RoIAlign (exact)")
    ax_edge.set_xlabel("RoI shift (image pixels)")
    ax_edge.set_ylabel("error of the RoI's left edge (image pixels)")
    ax_edge.set_title(
        f"First rounding: the edge is off by up to {stride / 2:g} px (stride {stride})"
    )
    ax_edge.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=9)
    ax_value.plot(shift, pool_error, color="tab:red", label="RoIPool: max of the bin - exact max")
    ax_value.plot(
        shift, align_error, color="tab:blue", lw=2, label="RoIAlign: mean of the bin - exact mean"
    )
    ax_value.set_xlabel("RoI shift (image pixels)")
    ax_value.set_ylabel("error of bin (0, 0) on a ramp map (image pixels)")
    ax_value.set_title("Both roundings: RoIPool's output jumps, RoIAlign's is exact")
    ax_value.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=9)
    return fig


def plot_roi_pool_vs_align_on_level(
    image, box, level, scale, bins, points, pooled, aligned, title=None
):
    """RoIPool's quantised bins next to RoIAlign's sample points, for one box on one level.

    image: (3, h, w) float in [0, 1], the model's input frame; box: (4,) x1 y1 x2 y2 in its
    pixels. level: the pyramid level k of P_k; scale: its spatial scale (1 / stride).
    bins: (h_start (ph,), h_end (ph,), w_start (pw,), w_end (pw,)) feature cells, end
    exclusive, from roi_pool_bins. points: (ph, pw, gh, gw, 2) sample (x, y) from
    roi_align_sampling_points. pooled, aligned: (ph, pw) one channel of each op's output.
    Drawn in the level's cell-index frame (as the rest of this section), with the image
    scaled by ``scale`` underneath, so that the cells show what one feature covers.
    """
    fig = plt.figure(figsize=(15, 6.3))
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 1, 0.5], hspace=0.45, wspace=0.25)
    ax_pool = fig.add_subplot(grid[:, 0])
    ax_align = fig.add_subplot(grid[:, 1], sharex=ax_pool, sharey=ax_pool)
    h, w = np.asarray(image).shape[1:]
    x1, y1, x2, y2 = np.asarray(box, dtype=float) * scale - 0.5
    left, right = np.floor(x1 - 1.5) + 0.5, np.ceil(x2 + 1.5) - 0.5
    top, bottom = np.floor(y1 - 1.5) + 0.5, np.ceil(y2 + 1.5) - 0.5
    for ax in (ax_pool, ax_align):
        pixels = np.clip(np.asarray(image).transpose(1, 2, 0), 0, 1) * 0.6 + 0.4
        ax.imshow(pixels, extent=(-0.5, w * scale - 0.5, h * scale - 0.5, -0.5))
        for edge in np.arange(left, right + 1):
            ax.axvline(edge, color="0.55", linewidth=0.5)
        for edge in np.arange(top, bottom + 1):
            ax.axhline(edge, color="0.55", linewidth=0.5)
        _box(ax, x1, y1, x2, y2, edgecolor="red", linewidth=2.5)
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
        ax.set_xlabel(f"x (P{level} cells; 1 cell = {1 / scale:g} pixels)")
    ax_pool.set_ylabel(f"y (P{level} cells)")

    h_start, h_end, w_start, w_end = bins
    for i in range(len(h_start)):
        for j in range(len(w_start)):
            # Alternating colours and insets keep neighbouring bins apart where they share
            # a row or column of cells (the ceil of one end meets the floor of the next).
            odd = (i + j) % 2
            inset = 0.12 if odd else 0.24
            _box(
                ax_pool,
                w_start[j] - 0.5 + inset,
                h_start[i] - 0.5 + inset,
                w_end[j] - 0.5 - inset,
                h_end[i] - 0.5 - inset,
                edgecolor=("tab:blue", "darkorange")[odd],
                linewidth=1.4,
            )
    ph, pw, gh, gw = points.shape[:4]
    ax_pool.set_title(
        f"RoIPool: box and {ph}x{pw} bins rounded to cells\n"
        "(neighbours share cells; max over each bin)",
        fontsize=11,
    )
    ax_pool.legend(
        handles=[
            plt.Line2D([], [], color="red", lw=2.5, label="detected box (exact)"),
            plt.Line2D([], [], color="tab:blue", lw=1.4, label="rounded bins"),
            plt.Line2D([], [], color="darkorange", lw=1.4, label="(alternate colours)"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        ncol=3,
        fontsize=8,
    )

    # The exact bins, recovered from the samples: g samples sit at (k + 0.5) / g of a bin.
    p = points.reshape(-1, 2)
    bin_w = (points[0, 1, 0, 0, 0] - points[0, 0, 0, 0, 0]) if pw > 1 else x2 - x1
    bin_h = (points[1, 0, 0, 0, 1] - points[0, 0, 0, 0, 1]) if ph > 1 else y2 - y1
    sx = points[0, 0, 0, 0, 0] - 0.5 * bin_w / gw
    sy = points[0, 0, 0, 0, 1] - 0.5 * bin_h / gh
    _box(ax_align, sx, sy, sx + pw * bin_w, sy + ph * bin_h, edgecolor="tab:blue", lw=1.5)
    for k in range(1, pw):
        ax_align.plot([sx + k * bin_w] * 2, [sy, sy + ph * bin_h], color="tab:blue", lw=0.8, ls=":")
    for k in range(1, ph):
        ax_align.plot([sx, sx + pw * bin_w], [sy + k * bin_h] * 2, color="tab:blue", lw=0.8, ls=":")
    ax_align.scatter(
        p[:, 0], p[:, 1], s=9, color="tab:blue", edgecolor="k", linewidth=0.3, zorder=3
    )
    ax_align.set_title(
        f"RoIAlign: exact {ph}x{pw} bins, {gh}x{gw} bilinear samples each\n"
        "(aligned=False, torchvision's default: half a cell off)",
        fontsize=11,
    )
    ax_align.legend(
        handles=[
            plt.Line2D([], [], color="red", lw=2.5, label="detected box"),
            plt.Line2D([], [], color="tab:blue", lw=1.5, label="bins as sampled"),
            plt.Line2D([], [], marker="o", color="tab:blue", mec="k", ls="", label="sample point"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        ncol=3,
        fontsize=8,
    )

    low = float(min(pooled.min(), aligned.min()))
    high = float(max(pooled.max(), aligned.max()))
    for row, (values, name) in enumerate(
        ((pooled, "RoIPool output (max per bin)"), (aligned, "RoIAlign output (mean of samples)"))
    ):
        ax = fig.add_subplot(grid[row, 2])
        im = ax.imshow(values, cmap="viridis", vmin=low, vmax=high)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(pw))
        ax.set_yticks(range(ph))
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    return fig


# --- backbone and FPN (tutorial 05) ------------------------------------------------


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

    def box(x, y, shape, label, colour, side):
        # Labels beside the box (left for C, right for P) so no arrow crosses them.
        bh, bw = max(shape[1] * scale, 0.12), max(shape[2] * scale, 0.12)
        ax.add_patch(plt.Rectangle((x - bw / 2, y - bh / 2), bw, bh, fc=colour, ec="black"))
        sign = -1 if side == "left" else 1
        ax.text(x + sign * (bw / 2 + 0.12), y, label, ha="right" if sign < 0 else "left",
                va="center", fontsize=9.5)  # fmt: skip
        return bh

    def arrow(x0, y0, x1, y1, text=None, colour="black", offset=(0.0, 0.12)):
        ax.annotate("", (x1, y1), (x0, y0),
                    arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.6})  # fmt: skip
        if text:
            ax.text((x0 + x1) / 2 + offset[0], (y0 + y1) / 2 + offset[1], text, ha="center",
                    va="center", fontsize=9, color=colour)  # fmt: skip

    ys = [1.4, 4.2, 6.6, 8.6, 10.2]
    h, w = image_hw
    ih = 1.5 * h / w
    ax.add_patch(plt.Rectangle((0.25, -2.3), 1.5, ih, fc="lightgrey", ec="black"))
    ax.text(1.0, -2.3 + ih / 2, f"image\n3x{h}x{w}", ha="center", va="center", fontsize=10)
    top_of_below = -2.3 + ih
    for i, shape in enumerate(c_shapes):
        level = i + 2
        label = f"C{level}: {shape[0]}x{shape[1]}x{shape[2]}\nstride {strides[i]}"
        bh = box(1.0, ys[i], shape, label, "tab:blue", "left")
        stage = "conv1, max pool, layer1" if i == 0 else f"layer{level - 1}"
        arrow(1.0, top_of_below + 0.05, 1.0, ys[i] - bh / 2 - 0.05, stage, "tab:blue",
              (0.3 + 0.055 * len(stage), 0))  # fmt: skip
        top_of_below = ys[i] + bh / 2
        arrow(2.4, ys[i], 5.6, ys[i], "lateral 1x1 conv -> 256 ch", "tab:green")
        ax.add_patch(plt.Circle((5.9, ys[i]), 0.25, fc="white", ec="black"))
        ax.text(5.9, ys[i], "+" if i < 3 else "=", ha="center", va="center", fontsize=14)
        arrow(6.2, ys[i], 8.9, ys[i], "3x3 conv", "tab:orange")
        p = p_shapes[i]
        box(9.9, ys[i], p, f"P{level}: {p[0]}x{p[1]}x{p[2]}\nstride {strides[i]}", "tab:orange",
            "right")  # fmt: skip
        if i < 3:
            up_from = (p_shapes[i + 1][1], p_shapes[i + 1][2])
            arrow(5.9, ys[i + 1] - 0.28, 5.9, ys[i] + 0.28,
                  f"nearest up\n{up_from[0]}x{up_from[1]} -> {shape[1]}x{shape[2]}",
                  "tab:red", (1.0, 0.0))  # fmt: skip
    p6 = p_shapes[4]
    box(9.9, ys[4], p6, f"P6: {p6[0]}x{p6[1]}x{p6[2]}\nstride {strides[4]}", "tab:purple",
        "right")  # fmt: skip
    arrow(9.9, ys[3] + 0.15, 9.9, ys[4] - 0.1, "max pool k1 s2", "tab:purple", (-0.9, 0))
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
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("column")
        ax.set_ylabel("row")
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.suptitle(f"FPN top-down step into P{level} (channel 0)")
    return fig


# --- RPN and masks (tutorials 06-07) -----------------------------------------------


def plot_objectness_levels(image, maps, strides):
    """The RPN's objectness on every pyramid level, over the image.

    image: (3, H, W) float in [0, 1]. maps: list of L (Hl, Wl) float in [0, 1], the
    highest sigmoid(objectness) of the A anchors of each location. strides: L ints.
    Location (r, c) is drawn as a square centred on (c, r) * stride: torchvision
    centres a location's anchors on its cell's top-left corner, not on the cell centre.
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


def plot_rpn_anchor_labels(image, gt_boxes, positives, negatives, ignored, title):
    """One image's anchors as the RPN's loss sees them.

    positives, negatives, ignored: (n, 4) anchors (x1 y1 x2 y2, image pixels); the
    negatives and ignored ones are usually a sample, say so in ``title``.
    """
    fig, ax = plt.subplots(figsize=(6.2, 6.4))
    show_image(ax, image, title, dim=0.35)
    draw_boxes(
        ax, gt_boxes, color="white", linewidth=1.5, linestyle="--", label="ground truth", halo=True
    )
    draw_boxes(
        ax, ignored, color="gold", linewidth=1.0, alpha=0.8, label="ignored (0.3 <= IoU < 0.7)"
    )
    draw_boxes(
        ax, negatives, color="tab:red", linewidth=0.8, alpha=0.6, label="negative (IoU < 0.3)"
    )
    draw_boxes(
        ax,
        positives,
        color="lime",
        linewidth=3.0,
        label="positive (IoU >= 0.7, or an object's best)",
        halo=True,
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8)
    return fig


def plot_proposals_nms(
    image, before, before_level, after, after_level, gt_boxes, nms_thresh, suppressed=None
):
    """Top proposals before and after the per-level NMS, side by side, coloured by level.

    before, after: (n, 4) boxes in image pixels, by decreasing objectness;
    before_level, after_level: (n,) pyramid level index (0 = P2). gt_boxes: (G, 4).
    suppressed: (n,) bool over ``before``, True for the boxes NMS removes; they are
        drawn dotted in black on the left panel instead of in their level's colour.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.8))
    removed = np.zeros(len(before), bool) if suppressed is None else np.asarray(suppressed)
    panels = (
        (before, before_level, removed, f"top {len(before)} proposals before NMS"),
        (
            after,
            after_level,
            np.zeros(len(after), bool),
            f"top {len(after)} after NMS per level (IoU > {nms_thresh})",
        ),
    )
    for ax, (boxes, level, gone, name) in zip(axes, panels, strict=True):
        show_image(ax, image, name, dim=0.35)
        for lv in np.unique(level):
            draw_boxes(
                ax,
                boxes[(level == lv) & ~gone],
                color=_LEVEL_COLOURS[lv],
                linewidth=1.4,
                label=f"from P{lv + 2}",
            )
        draw_boxes(
            ax,
            gt_boxes,
            color="white",
            linewidth=1.5,
            linestyle="--",
            label="ground truth",
            halo=True,
        )
        if gone.any():
            draw_boxes(
                ax, boxes[gone], color="black", linewidth=1.4, linestyle=":", label="removed by NMS"
            )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=8)
    return fig


def plot_mask_target(image, gt_mask, proposal, target):
    """A gt mask, a proposal over it, and the proposal's 28 x 28 soft target.

    gt_mask: (H, W) {0, 1}; proposal: (4,) x1 y1 x2 y2; target: (M, M) in [0, 1].
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    show_image(axes[0], image, "gt mask (white outline), proposal (black)")
    h, w = gt_mask.shape
    axes[0].contour(
        np.arange(w) + 0.5,
        np.arange(h) + 0.5,
        gt_mask,
        levels=[0.5],
        colors="white",
        linewidths=1.5,
    )
    draw_boxes(axes[0], proposal[None], color="black", linewidth=2.5)
    im = axes[1].imshow(target, vmin=0, vmax=1, cmap="viridis")
    m = target.shape[0]
    axes[1].set_title(f"{m}x{m} target: RoIAlign of the mask\nover the proposal", fontsize=10)
    axes[1].set_xlabel("mask column")
    axes[1].set_ylabel("mask row")
    fig.colorbar(im, ax=axes[1], label="target (soft at the edges)")
    return fig


def plot_class_masks(probs, class_names, gt_label, title):
    """One RoI's M x M mask probability for every class; the gt class framed.

    probs: (C, M, M) in [0, 1]; class_names: C names; gt_label: int.
    """
    c = len(probs)
    fig, axes = plt.subplots(1, c, figsize=(3.0 * c, 3.4))
    for k, ax in enumerate(axes):
        im = ax.imshow(probs[k], vmin=0, vmax=1, cmap="viridis")
        ax.set_title(
            f"class {k}: {class_names[k]}" + (" (gt)" if k == gt_label else ""), fontsize=9
        )
        ax.set_xticks([])
        ax.set_yticks([])
        if k == gt_label:
            for side in ax.spines.values():
                side.set_edgecolor("tab:red")
                side.set_linewidth(3)
    fig.colorbar(im, ax=axes, shrink=0.8, label="sigmoid(logit)")
    fig.suptitle(title)
    return fig


def plot_sigmoid_vs_softmax(grad_sigmoid, grad_softmax, class_names, losses):
    """Gradient of each loss w.r.t. every class channel of the same logits.

    grad_sigmoid, grad_softmax: (C, M, M). losses: (sigmoid value, softmax value).
    The per-class sigmoid loss touches only the gt channel; the softmax touches all.
    """
    c = grad_sigmoid.shape[0]
    fig, axes = plt.subplots(2, c, figsize=(3.0 * c, 6.4))
    limit = max(np.abs(grad_sigmoid).max(), np.abs(grad_softmax).max(), 1e-12)
    for row, (grad, name, value) in enumerate(
        zip(
            (grad_sigmoid, grad_softmax),
            ("sigmoid (per class)", "softmax (multinomial)"),
            losses,
            strict=True,
        )
    ):
        for k in range(c):
            ax = axes[row, k]
            im = ax.imshow(grad[k], vmin=-limit, vmax=limit, cmap="coolwarm")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{class_names[k]}: |g| max {np.abs(grad[k]).max():.1e}", fontsize=8)
        axes[row, 0].set_ylabel(f"{name}\nloss {value:.3f}", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="d loss / d logit")
    fig.suptitle("gradient reaching each class channel")
    return fig


def plot_paste(image, prob, box, expanded, pasted):
    """Pasting one M x M probability back into the image.

    prob: (M, M); box, expanded: (4,) the detection and its box grown by (M + 2) / M;
    pasted: (H, W) the full-image probability.
    """
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), gridspec_kw={"wspace": 0.35})
    im = axes[0].imshow(prob, vmin=0, vmax=1, cmap="viridis")
    axes[0].set_title(f"predicted {prob.shape[0]}x{prob.shape[1]} mask", fontsize=10)
    axes[0].set_xlabel("mask column")
    axes[0].set_ylabel("mask row")
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    show_image(axes[1], image, "box (black) and the box grown\nfor the padding (dashed)")
    axes[1].title.set_fontsize(10)
    draw_boxes(axes[1], box[None], color="black", linewidth=2.0)
    draw_boxes(axes[1], expanded[None], color="black", linewidth=1.2, linestyle="--")
    red = np.array([1.0, 0.0, 0.0])[:, None, None]
    overlay = image * (1 - 0.6 * pasted[None]) + red * 0.6 * pasted[None]
    show_image(axes[2], overlay, "pasted probability (red),\nits 0.5 level (white)")
    axes[2].title.set_fontsize(10)
    h, w = pasted.shape
    axes[2].contour(
        np.arange(w) + 0.5, np.arange(h) + 0.5, pasted, levels=[0.5], colors="white", linewidths=1.5
    )
    return fig


# --- training and detections (tutorial 08, tour) ----------------------------------

_CLASS_COLOURS = ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def _class_colour(label):
    return _CLASS_COLOURS[int(label) % len(_CLASS_COLOURS)]


def draw_detections(ax, image, detections, class_names, score_thresh=0.5, title=None):
    """An image with its detections: mask tinted, box outlined, "name score" above.

    image: (3, H, W) float in [0, 1]. detections: one image's model output, boxes (D, 4)
    x1y1x2y2 pixels, labels (D,) int, scores (D,) float, masks (D, 1, H, W) probabilities
    (optional). Only detections scoring at least ``score_thresh`` are drawn; masks are cut
    at probability 0.5, as evaluation does.
    """
    from matplotlib.colors import to_rgb

    image = np.asarray(image, dtype=np.float32)
    tinted = image.transpose(1, 2, 0).copy()
    keep = np.flatnonzero(np.asarray(detections["scores"]) >= score_thresh)
    masks = detections.get("masks")
    if masks is not None:
        for i in keep:
            inside = masks[i, 0] > 0.5
            tinted[inside] = 0.45 * tinted[inside] + 0.55 * np.array(
                to_rgb(_class_colour(detections["labels"][i]))
            )
    show_image(ax, tinted, title)
    h, w = image.shape[1:]
    for i in keep:
        label = int(detections["labels"][i])
        colour = _class_colour(label)
        if masks is not None and (masks[i, 0] > 0.5).any():
            # The outline keeps a mask visible where its tint matches the background.
            for width, line in ((2.6, "black"), (1.2, "white")):
                ax.contour(
                    np.arange(w) + 0.5,
                    np.arange(h) + 0.5,
                    masks[i, 0],
                    levels=[0.5],
                    colors=line,
                    linewidths=width,
                )
        x1, y1 = detections["boxes"][i][:2]
        draw_boxes(ax, detections["boxes"][i], color=colour, linewidth=1.8, halo=True)
        name = class_names[label] if label < len(class_names) else f"class {label}"
        above = y1 > 0.08 * h  # else inside the box: above it would cover the title
        ax.text(
            x1,
            y1 - 1 if above else y1 + 1,
            f"{name} {detections['scores'][i]:.2f}",
            color="white",
            fontsize=7,
            va="bottom" if above else "top",
            bbox=dict(facecolor=colour, edgecolor="none", pad=1.0, alpha=0.9),
        )


def plot_detections(image, detections, class_names, score_thresh=0.5, title=None):
    """One image with its detections (``draw_detections``) on a new figure."""
    h, w = np.asarray(image).shape[1:]
    fig, ax = plt.subplots(figsize=(max(4.0, 5.0 * w / max(h, w)), max(4.0, 5.0 * h / max(h, w))))
    count = int((np.asarray(detections["scores"]) >= score_thresh).sum())
    draw_detections(
        ax,
        image,
        detections,
        class_names,
        score_thresh,
        title or f"{count} detections with score >= {score_thresh:g}",
    )
    return fig


def plot_loss_curves(log, loss_names, smooth=20):
    """The five training losses and their sum against the step (tutorial 08).

    log: column name -> (S,) array, as ``train.read_log`` returns (step, lr, losses).
    loss_names: the columns to draw. smooth: width of the running mean drawn over the
    raw values (which are noisy: each step sees only a few images).
    """
    steps = log["step"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    names = list(loss_names) + ["loss"]
    for k, name in enumerate(names):
        values = log[name]
        ax = axes[1] if name == "loss" else axes[0]
        colour = "black" if name == "loss" else f"C{k}"
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
        width = max(1, min(smooth, len(values)))
        running = np.convolve(values, np.ones(width) / width, mode="valid")
        ax.plot(steps[width - 1 :], running, color=colour, label=name, linewidth=1.8)
    axes[0].set_title(f"the five losses (running mean of {smooth} steps)")
    axes[1].set_title("total loss and learning rate")
    lr_ax = axes[1].twinx()
    lr_ax.plot(steps, log["lr"], color="tab:red", linestyle="--", label="learning rate")
    lr_ax.set_ylabel("learning rate", color="tab:red")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, framealpha=0.95)
    handles = axes[1].get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    lr_ax.legend(handles=handles, loc="center right", fontsize=8, framealpha=0.95)
    fig.tight_layout()
    return fig


def plot_detection_rows(images, rows, class_names, score_thresh=0.5):
    """Detections of several models on the same images, one row per model (tutorial 08).

    images: list of (3, H, W) float in [0, 1]. rows: list of (name, detections), the
    detections a list with one model output per image.
    """
    n = len(images)
    fig, axes = plt.subplots(len(rows), n, figsize=(3.0 * n, 3.2 * len(rows)), squeeze=False)
    for r, (name, dets) in enumerate(rows):
        for k in range(n):
            ax = axes[r, k]
            count = int((np.asarray(dets[k]["scores"]) >= score_thresh).sum())
            draw_detections(ax, images[k], dets[k], class_names, score_thresh, f"{count} found")
            ax.set_xlabel("")
            ax.set_ylabel(name if k == 0 else "", fontsize=10)
    fig.suptitle(f"detections with score >= {score_thresh:g} (masks cut at probability 0.5)")
    fig.tight_layout()
    return fig


def plot_tour_detections(images, detections, truths, class_names, score_thresh=0.5):
    """The model's detections on a row of images, ground-truth boxes dashed (the tour).

    images: list of (3, H, W) float in [0, 1]. detections: one model output per image
    (boxes, labels, scores, masks, as ``draw_detections`` takes). truths: one target per
    image, boxes (G, 4) x1y1x2y2 pixels.
    """
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.9), squeeze=False)
    for k, ax in enumerate(axes[0]):
        count = int((np.asarray(detections[k]["scores"]) >= score_thresh).sum())
        g = len(truths[k]["boxes"])
        draw_detections(
            ax,
            images[k],
            detections[k],
            class_names,
            score_thresh,
            f"image {k}: {count} found, {g} object{'s' if g != 1 else ''}",
        )
        draw_boxes(ax, truths[k]["boxes"], color="black", linewidth=1.2, linestyle="--")
        if k:
            ax.set_ylabel("")
    fig.legend(
        handles=[
            plt.Line2D(
                [],
                [],
                color="tab:blue",
                lw=1.8,
                label="detection: box, mask (tint), class and score",
            ),
            plt.Line2D([], [], color="black", lw=1.2, ls="--", label="ground-truth box"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.02),
        ncol=2,
        fontsize=9,
    )
    fig.suptitle(
        f"the shipped shapes model: detections with score >= {score_thresh:g}, "
        "masks cut at probability 0.5"
    )
    fig.tight_layout()
    return fig
