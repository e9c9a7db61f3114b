"""RoI operators: RoIPool's roundings, RoIAlign's samples, crop_and_resize (tutorial 04, tour).

These plots work in RoIAlign's cell-index frame: cell (i, j) is a unit square centred on
(x=j, y=i), which is where roi_align_sampling_points puts a sample that reads that cell
alone. A box in the pixel frame (docs/architecture.md, Frames and pixels), where cell
(i, j) covers [j, j+1) x [i, i+1), is drawn shifted by -0.5.

Shapes used below:
    H, W: feature-map height and width    ph, pw: output bins
    gh, gw: samples per bin (rows, columns)
"""

import matplotlib.pyplot as plt
import numpy as np

from . import draw_boxes, key, legend_below, write_values

# One colour per output bin, so that a bin's cells, samples and output match by eye.
_BIN_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red", "tab:cyan",
                "tab:olive", "tab:pink", "tab:brown")  # fmt: skip
_SAMPLE = {"marker": "o", "mec": "k", "ls": ""}  # a sample point's legend entry


def draw_feature_grid(ax, fmap, title=None, show_values=True, cmap="Greys"):
    """A feature map as a grid of cells in the cell-index frame, optionally with values.

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
        for (i, j), value in np.ndenumerate(fmap):
            # Near the top of the cell: its centre is where sample lines end.
            ax.text(j, i - 0.3, f"{value:.2f}", ha="center", va="center", fontsize=6.5,
                    color="0.2")  # fmt: skip
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xlabel("x (feature cells)")
    ax.set_ylabel("y (feature cells)")
    if title:
        ax.set_title(title)


def _draw_output(ax, values, title):
    """An op's (ph, pw) output for one channel, each value written in its bin."""
    ph, pw = values.shape
    ax.imshow(values, cmap="Blues", vmin=0, vmax=1, extent=(-0.5, pw - 0.5, ph - 0.5, -0.5))
    write_values(ax, values, ".3f", dark=values > 0.6, fontsize=11, fontweight="bold")
    ax.set_xticks(range(pw))
    ax.set_yticks(range(ph))
    ax.set_xlabel("output column")
    ax.set_ylabel("output row")
    ax.set_title(title)


def _draw_bins(ax, box, ph, pw, color="red", linewidth=2.0, divider_width=1.0):
    """A box (4,) x1 y1 x2 y2 cut into ph x pw equal bins: outline solid, dividers dotted."""
    x1, y1, x2, y2 = box
    draw_boxes(ax, box, color=color, linewidth=linewidth)
    for i in range(1, ph):
        ax.plot([x1, x2], [y1 + i * (y2 - y1) / ph] * 2, color=color, lw=divider_width, ls=":")
    for j in range(1, pw):
        ax.plot([x1 + j * (x2 - x1) / pw] * 2, [y1, y2], color=color, lw=divider_width, ls=":")


def _draw_samples(ax, points, color="tab:blue", size=40, **style):
    """Sample points (..., 2) (x, y) as dots, black-rimmed unless ``style`` says otherwise."""
    p = np.asarray(points).reshape(-1, 2)
    style.setdefault("edgecolor", "k")
    ax.scatter(p[:, 0], p[:, 1], s=size, color=color, zorder=3, **style)


def _rounded_bin(h_start, h_end, w_start, w_end, i, j, inset):
    """Bin (i, j) of roi_pool_bins as a box in the cell-index frame, shrunk by ``inset``."""
    return (w_start[j] - 0.5 + inset, h_start[i] - 0.5 + inset,
            w_end[j] - 0.5 - inset, h_end[i] - 0.5 - inset)  # fmt: skip


def plot_roi_pool(fmap, roi_box, bins, out, argmax):
    """RoIPool on one channel: the RoI, its rounding, the rounded bins and their maxima.

    fmap: (H, W) float feature map; roi_box: (4,) x1, y1, x2, y2 in the pixel frame
    (spatial scale 1). bins: (h_start (ph,), h_end (ph,), w_start (pw,), w_end (pw,)) int
    cells, end exclusive, from roi_pool_bins. out: (ph, pw) float pooled values;
    argmax: (ph, pw) int, flat index y * W + x of each bin's winning cell.
    """
    w = fmap.shape[1]
    fig, (ax, ax_out) = plt.subplots(
        1, 2, figsize=(12, 5.6), gridspec_kw={"width_ratios": [1.6, 1]}
    )
    draw_feature_grid(ax, fmap, "RoIPool: the RoI is rounded, then each bin is rounded")
    draw_boxes(ax, np.asarray(roi_box) - 0.5, color="red", linestyle="--", linewidth=2)
    handles = [key("RoI as given", "red", linestyle="--", lw=2)]
    ph, pw = len(bins[0]), len(bins[2])
    for i, j in np.ndindex(ph, pw):
        k = i * pw + j
        colour = _BIN_COLOURS[k % len(_BIN_COLOURS)]
        # Growing insets keep overlapping bins visible; shrinking radii keep apart the
        # circles of bins that share a winner.
        draw_boxes(ax, _rounded_bin(*bins, i, j, 0.06 * (1 + k)), color=colour, linewidth=2)
        wy, wx = divmod(int(argmax[i, j]), w)
        ax.add_patch(plt.Circle((wx, wy), 0.45 - 0.07 * k, fill=False, edgecolor=colour,
                                linewidth=2.5))  # fmt: skip
        rows, cols = f"{bins[0][i]}-{bins[1][i] - 1}", f"{bins[2][j]}-{bins[3][j] - 1}"
        handles.append(key(f"bin ({i},{j}): rows {rows}, cols {cols}", colour, lw=2))
    handles.append(key("max of the bin", "k", marker="o", mfc="none", ls="", ms=10))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, -0.12), ncol=2, fontsize=8)
    _draw_output(ax_out, out, "RoIPool output (max per bin)")
    return fig


def plot_roi_align_samples(fmap, roi_box, points, index, weight, out, avg_max=None):
    """RoIAlign on one channel: exact bins, their sample points, each point's 4 neighbours.

    fmap: (H, W) float; roi_box: (4,) x1, y1, x2, y2 in the cell-index frame (as sampled).
    points: (ph, pw, gh, gw, 2) float sample (x, y), cell-index frame.
    index, weight: (ph, pw, gh, gw, 4) int flat cell index y * W + x and float bilinear
        weight of each sample's four neighbours, from bilinear_neighbours.
    out: (ph, pw) float, the output (reduction "avg"); avg_max: optional (ph, pw), "max".
    """
    w = fmap.shape[1]
    ph, pw = points.shape[:2]
    ncols = 3 if avg_max is not None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 + 3.6 * (ncols - 1), 5.6),
                             gridspec_kw={"width_ratios": [1.8] + [1] * (ncols - 1)})  # fmt: skip
    ax = axes[0]
    draw_feature_grid(ax, fmap, "RoIAlign (aligned=True): exact bins, 2x2 samples per bin")
    _draw_bins(ax, roi_box, ph, pw)
    for i, j in np.ndindex(ph, pw):
        colour = _BIN_COLOURS[(i * pw + j) % len(_BIN_COLOURS)]
        cells, weights = index[i, j].reshape(-1, 4), weight[i, j].reshape(-1, 4)
        for (px, py), sample_cells, ws in zip(points[i, j].reshape(-1, 2), cells, weights,
                                              strict=True):  # fmt: skip
            for cell, wgt in zip(sample_cells, ws, strict=True):
                if wgt > 0:
                    cy, cx = divmod(int(cell), w)
                    ax.plot([px, cx], [py, cy], color=colour, lw=0.5 + 2.5 * wgt, alpha=0.7)
        _draw_samples(ax, points[i, j], colour)
    handles = [
        key("RoI and its bins (no rounding)", "red", lw=2),
        key("sample point", "tab:blue", **_SAMPLE),
        key("to its 4 neighbour cells (width ~ bilinear weight)", "tab:blue", lw=2),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, -0.1), fontsize=8)
    _draw_output(axes[1], out, "RoIAlign output (average of 4)")
    if avg_max is not None:
        _draw_output(axes[2], avg_max, 'reduction="max" (max of 4)')
    return fig


def plot_aligned_vs_legacy(fmap, roi_box_pixels, points_legacy, points_aligned):
    """Where aligned=False and aligned=True put the samples of the same RoI.

    fmap: (H, W) float; roi_box_pixels: (4,) x1, y1, x2, y2, pixel frame (scale 1).
    points_*: (ph, pw, gh, gw, 2) float from roi_align_sampling_points, cell-index frame.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    box = np.asarray(roi_box_pixels) - 0.5
    for ax, points, name in zip(
        axes,
        (points_legacy, points_aligned),
        ("aligned=False (legacy, torchvision's default)", "aligned=True (half-pixel correction)"),
        strict=True,
    ):
        draw_feature_grid(ax, fmap, name, show_values=False)
        draw_boxes(ax, box, color="red", linewidth=2)
        _draw_samples(ax, points, size=36)
        ax.plot(*points.reshape(-1, 2).mean(axis=0), marker="x", color="tab:blue", ms=12, mew=3)
        ax.plot((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, marker="+", color="red", ms=16,
                mew=2)  # fmt: skip
    handles = [
        key("RoI (pixel frame)", "red", lw=2),
        key("RoI centre", "red", marker="+", ls="", ms=12),
        key("sample", "tab:blue", **_SAMPLE),
        key("mean of samples", "tab:blue", marker="x", ls="", ms=10),
    ]
    axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(0, -0.1), ncol=2, fontsize=8)
    return fig


def plot_adaptive_sampling(fmap_shape, roi_box, points, title):
    """The sample grid of a large RoI under sampling_ratio <= 0 (ceil(size / bins) per axis).

    fmap_shape: (H, W); roi_box: (4,) float, cell-index frame;
    points: (ph, pw, gh, gw, 2) float sample (x, y), cell-index frame.
    """
    h, w = fmap_shape
    fig, ax = plt.subplots(figsize=(7.5, 7.5 * h / w + 0.8))
    draw_feature_grid(ax, np.zeros((h, w)), title, show_values=False)
    ph, pw = points.shape[:2]
    _draw_bins(ax, roi_box, ph, pw)
    for i, j in np.ndindex(ph, pw):
        colour = _BIN_COLOURS[(i * pw + j) % len(_BIN_COLOURS)]
        _draw_samples(ax, points[i, j], colour, size=14, edgecolor="face")
    return fig


def plot_crop_and_resize_vs_roi_align(fmap_shape, roi_box, tf_points, align_points):
    """TensorFlow's crop_and_resize samples next to RoIAlign's for the same box.

    fmap_shape: (H, W); roi_box: (4,) float, cell-index frame.
    tf_points: (ch, cw, 2) and align_points: (ph, pw, gh, gw, 2) float (x, y),
    cell-index frame.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    titles = (
        f"crop_and_resize to {tf_points.shape[0]}x{tf_points.shape[1]}: corners sampled, no bins",
        "RoIAlign 2x2 bins x 2x2 samples: sub-cell centres",
    )
    for ax, p, title in zip(axes, (tf_points, align_points), titles, strict=True):
        draw_feature_grid(ax, np.zeros(fmap_shape), title, show_values=False)
        draw_boxes(ax, roi_box, color="red", linewidth=2)
        _draw_samples(ax, p, "tab:green")
    return fig


def plot_quantisation_sweep(shift, edge_error, pool_error, align_error, stride):
    """RoIPool's quantisation error as a RoI slides by sub-cell steps, next to RoIAlign's.

    shift: (S,) float, RoI offset in image pixels; edge_error: (S,) RoIPool's rounded left
    edge minus the true one; pool_error, align_error: (S,) output of one bin minus its
    exact value (on a ramp map whose value is x in image pixels); all in image pixels.
    stride: image pixels per feature cell.
    """
    fig, (ax_edge, ax_value) = plt.subplots(1, 2, figsize=(13, 4.8))
    ax_edge.plot(shift, edge_error, color="tab:red", label="RoIPool (rounded to a cell)")
    ax_edge.plot(shift, np.zeros_like(shift), color="tab:blue", label="RoIAlign (exact)")
    ax_edge.set_ylabel("error of the RoI's left edge (image pixels)")
    ax_edge.set_title(
        f"First rounding: the edge is off by up to {stride / 2:g} px (stride {stride})"
    )
    ax_value.plot(shift, pool_error, color="tab:red", label="RoIPool: max of the bin - exact max")
    ax_value.plot(
        shift, align_error, color="tab:blue", lw=2, label="RoIAlign: mean of the bin - exact mean"
    )
    ax_value.set_ylabel("error of bin (0, 0) on a ramp map (image pixels)")
    ax_value.set_title("Both roundings: RoIPool's output jumps, RoIAlign's is exact")
    for ax in (ax_edge, ax_value):
        ax.set_xlabel("RoI shift (image pixels)")
        legend_below(ax, y=-0.14, fontsize=9)
    return fig


def _level_panel(ax, image, box, scale):
    """The image scaled to one level's cells, the cell grid around ``box``, the box itself.

    image: (3, h, w) in [0, 1], input frame; box: (4,) x1 y1 x2 y2 in the level's
    cell-index frame. The view spans the box and 1.5 cells around it.
    """
    h, w = np.asarray(image).shape[1:]
    x1, y1, x2, y2 = box
    left, right = np.floor(x1 - 1.5) + 0.5, np.ceil(x2 + 1.5) - 0.5
    top, bottom = np.floor(y1 - 1.5) + 0.5, np.ceil(y2 + 1.5) - 0.5
    pixels = np.clip(np.asarray(image).transpose(1, 2, 0), 0, 1) * 0.6 + 0.4
    ax.imshow(pixels, extent=(-0.5, w * scale - 0.5, h * scale - 0.5, -0.5))
    for edge in np.arange(left, right + 1):
        ax.axvline(edge, color="0.55", linewidth=0.5)
    for edge in np.arange(top, bottom + 1):
        ax.axhline(edge, color="0.55", linewidth=0.5)
    draw_boxes(ax, box, color="red", linewidth=2.5)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)


def _draw_pool_bins_on_level(ax, bins, ph, pw):
    """RoIPool's rounded bins (roi_pool_bins' tuple), in two alternating colours."""
    for i, j in np.ndindex(ph, pw):
        # Alternating colours and insets keep neighbouring bins apart where they share
        # a row or column of cells (the ceil of one end meets the floor of the next).
        odd = (i + j) % 2
        inset = 0.12 if odd else 0.24
        colour = ("tab:blue", "darkorange")[odd]
        draw_boxes(ax, _rounded_bin(*bins, i, j, inset), color=colour, linewidth=1.4)


def _draw_align_bins_on_level(ax, points, box):
    """RoIAlign's exact bins, recovered from its samples, and the samples themselves.

    points: (ph, pw, gh, gw, 2) float sample (x, y); box: (4,) the RoI, both in the
    level's cell-index frame (the box only gives the bin size when there is one bin).
    """
    ph, pw, gh, gw = points.shape[:4]
    first = points[0, 0, 0, 0]
    # g samples sit at (k + 0.5) / g of a bin: the bin size is the step between bins.
    bin_w = points[0, 1, 0, 0, 0] - first[0] if pw > 1 else box[2] - box[0]
    bin_h = points[1, 0, 0, 0, 1] - first[1] if ph > 1 else box[3] - box[1]
    sx, sy = first[0] - 0.5 * bin_w / gw, first[1] - 0.5 * bin_h / gh
    bins = (sx, sy, sx + pw * bin_w, sy + ph * bin_h)
    _draw_bins(ax, bins, ph, pw, color="tab:blue", linewidth=1.5, divider_width=0.8)
    _draw_samples(ax, points, size=9, linewidth=0.3)


def _draw_outputs_on_level(fig, cells, pooled, aligned):
    """Both ops' (ph, pw) outputs in ``cells`` (two grid cells), on one colour scale."""
    low = float(min(pooled.min(), aligned.min()))
    high = float(max(pooled.max(), aligned.max()))
    for cell, values, name in zip(
        cells,
        (pooled, aligned),
        ("RoIPool output (max per bin)", "RoIAlign output (mean of samples)"),
        strict=True,
    ):
        ax = fig.add_subplot(cell)
        im = ax.imshow(values, cmap="viridis", vmin=low, vmax=high)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]))
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def plot_roi_pool_vs_align_on_level(
    image, box, level, scale, bins, points, pooled, aligned, title=None
):
    """RoIPool's quantised bins next to RoIAlign's sample points, for one box on one level.

    image: (3, h, w) float in [0, 1], the model's input frame; box: (4,) x1 y1 x2 y2 in its
    pixels. level: the pyramid level k of P_k; scale: its spatial scale (1 / stride).
    bins: (h_start (ph,), h_end (ph,), w_start (pw,), w_end (pw,)) int feature cells, end
    exclusive, from roi_pool_bins. points: (ph, pw, gh, gw, 2) float sample (x, y) from
    roi_align_sampling_points. pooled, aligned: (ph, pw) float, one channel of each op's
    output. Drawn in the level's cell-index frame, with the image scaled by ``scale``
    underneath, so that the cells show what one feature covers.
    """
    fig = plt.figure(figsize=(15, 6.3))
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 1, 0.5], hspace=0.45, wspace=0.25)
    ax_pool = fig.add_subplot(grid[:, 0])
    ax_align = fig.add_subplot(grid[:, 1], sharex=ax_pool, sharey=ax_pool)
    cell_box = np.asarray(box, dtype=float) * scale - 0.5
    for ax in (ax_pool, ax_align):
        _level_panel(ax, image, cell_box, scale)
        ax.set_xlabel(f"x (P{level} cells; 1 cell = {1 / scale:g} pixels)")
    ax_pool.set_ylabel(f"y (P{level} cells)")
    ph, pw, gh, gw = points.shape[:4]
    _draw_pool_bins_on_level(ax_pool, bins, ph, pw)
    _draw_align_bins_on_level(ax_align, points, cell_box)
    pool_keys = [
        key("detected box (exact)", "red", lw=2.5),
        key("rounded bins", "tab:blue", lw=1.4),
        key("(alternate colours)", "darkorange", lw=1.4),
    ]
    align_keys = [
        key("detected box", "red", lw=2.5),
        key("bins as sampled", "tab:blue", lw=1.5),
        key("sample point", "tab:blue", **_SAMPLE),
    ]
    ax_pool.set_title(
        f"RoIPool: box and {ph}x{pw} bins rounded to cells\n"
        "(neighbours share cells; max over each bin)",
        fontsize=11,
    )
    ax_align.set_title(
        f"RoIAlign: exact {ph}x{pw} bins, {gh}x{gw} bilinear samples each\n"
        "(aligned=False, torchvision's default: half a cell off)",
        fontsize=11,
    )
    legend_below(ax_pool, pool_keys, ncol=3, y=-0.1)
    legend_below(ax_align, align_keys, ncol=3, y=-0.1)
    _draw_outputs_on_level(fig, (grid[0, 2], grid[1, 2]), pooled, aligned)
    if title:
        fig.suptitle(title)
    return fig
