"""Figures of RoIAlign across frameworks: tutorial 09 and ``tinymaskrcnn check --save-figure``.

Every function takes plain arrays and returns a ``matplotlib.figure.Figure`` (no pyplot,
so nothing here picks a backend or keeps global figures); ``save`` writes it atomically.
Maps are drawn in cell-index units: cell (i, j) is centred on x = j, y = i, the frame in
which roi_ops and roi_variants place their samples.

Shapes used below: H x W a map, K RoIs, ph x pw output bins, gh x gw samples per bin.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .. import roi_variants
from . import save  # noqa: F401 (tutorial 09 and check save through here)

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _show_map(ax, fmap, title=None):
    """fmap: (H, W) float, drawn with cell (i, j) centred on (j, i) and its borders faint."""
    h, w = fmap.shape
    ax.imshow(fmap, cmap="Greys", extent=(-0.5, w - 0.5, h - 0.5, -0.5), alpha=0.55)
    ax.set_xticks(range(w))
    ax.set_yticks(range(h))
    ax.set_xticks(np.arange(-0.5, w), minor=True)
    ax.set_yticks(np.arange(-0.5, h), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(labelsize=7, which="both", length=0)
    ax.set_xlim(-1.6, w + 0.6)
    ax.set_ylim(h + 0.6, -1.6)
    if title:
        ax.set_title(title, fontsize=9)


def _draw_rule(ax, name, roi, output_size, spatial_scale, sampling_ratio, colour, marker="o"):
    """Where variant ``name`` reads the map for one RoI (5,): its box and bins, its samples."""
    h, w = ax.images[0].get_array().shape
    v = roi_variants.rule(name)
    ph, pw = output_size
    if v.sampler == "roi_pool":
        y0, y1, x0, x1 = (
            b[0] for b in roi_variants.pool_bins(name, roi, output_size, (h, w), spatial_scale)
        )
        for i in range(ph):
            for j in range(pw):
                if y1[i] > y0[i] and x1[j] > x0[j]:  # each bin its colour: they may overlap
                    tint = COLOURS[(i * pw + j) % len(COLOURS)]
                    corner, size = (x0[j] - 0.5, y0[i] - 0.5), (x1[j] - x0[j], y1[i] - y0[i])
                    ax.add_patch(Rectangle(corner, *size, fc=tint, alpha=0.3, ec=tint, lw=1.5))
        return
    (points,) = roi_variants.sample_points(
        name, roi, output_size, (h, w), spatial_scale, sampling_ratio
    )
    if v.sampler == "bilinear":  # the box and its bins, as this rule places them
        corners = (roi[0, 1:] + v.shift_in) * spatial_scale - (0.5 if v.aligned else 0.0)
        size = corners[2:] - corners[:2]
        size = size if v.aligned else np.maximum(size, 1.0)
        for i in range(ph + 1):
            y = corners[1] + i * size[1] / ph
            ax.plot([corners[0], corners[0] + size[0]], [y, y], color=colour, lw=0.8)
        for j in range(pw + 1):
            x = corners[0] + j * size[0] / pw
            ax.plot([x, x], [corners[1], corners[1] + size[1]], color=colour, lw=0.8)
    else:  # crop_and_resize: the box from first to last sample, no bins
        lo, hi = points[0, 0, 0, 0], points[-1, -1, 0, 0]
        ax.add_patch(Rectangle(lo, *(hi - lo), fill=False, edgecolor=colour, lw=0.8, ls="--"))
        if v.method == "nearest":  # each sample snaps to its cell centre (C roundf)
            snapped = np.floor(points) + (points - np.floor(points) >= 0.5)
            ax.scatter(*snapped.reshape(-1, 2).T, s=60, facecolor="none", edgecolor=colour, lw=1.2)
    ax.scatter(*points.reshape(-1, 2).T, s=14, color=colour, marker=marker, zorder=3)


def sampling_panels(fmap, roi, output_size, spatial_scale, sampling_ratio, panels):
    """Small multiples: one RoI on one map as each rule reads it.

    fmap: (H, W) map; roi: (5,) [batch, x1, y1, x2, y2] input pixels; output_size (ph, pw).
    panels: list of (title, variant name whose geometry the panel draws, caption).
    """
    cols = 4
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.4 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    roi = np.asarray(roi, np.float64).reshape(1, 5)
    for ax, (title, name, caption), colour in zip(axes, panels, COLOURS * 4, strict=False):
        _show_map(ax, fmap, title)
        _draw_rule(ax, name, roi, output_size, spatial_scale, sampling_ratio, colour)
        ax.set_xlabel(caption, fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"One RoI {roi[0, 1:].round(2).tolist()} (input px, spatial_scale {spatial_scale:g}), "
        f"{output_size[0]}x{output_size[1]} bins, sampling_ratio {sampling_ratio}: "
        "where each rule reads",
        fontsize=10,
    )
    return fig


def difference_table(labels, gaps, vmax=5.0):
    """Heat map of gaps: (L, L) max |difference| between rules on one shared case.

    inf marks a pair where one rule gives NaN and the other a number (tensorrt-avg's empty
    grids); colours saturate at ``vmax`` so that mmcv's -10000 does not hide the rest.
    """
    n = len(labels)
    fig = Figure(figsize=(0.55 * n + 3.5, 0.5 * n + 2.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.minimum(gaps, vmax), cmap="magma_r", vmin=0, vmax=vmax)
    for (i, j), gap in np.ndenumerate(gaps):
        text = (
            "0"
            if gap == 0
            else "NaN"
            if np.isinf(gap)
            else f"{gap:.0e}"
            if gap > 99
            else f"{gap:.2f}"
        )
        colour = "w" if gap > 0.6 * vmax else "k"
        ax.text(j, i, text, ha="center", va="center", fontsize=6.5, color=colour)
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7.5)
    ax.set_yticks(range(n), labels, fontsize=7.5)
    fig.colorbar(
        image, ax=ax, shrink=0.7, label=f"max |difference| over all outputs (>= {vmax:g} dark)"
    )
    ax.set_title("Pairwise max differences between rules (one random N(0,1) case)", fontsize=10)
    return fig


def corner_max(patch, origin, points, interpolated, corner_terms, reductions, differences):
    """The ONNX "max" (of weighted corners) against the max of interpolated samples.

    patch: (h, w) map values around the bin, its cell (0, 0) at ``origin`` (x, y);
    points: (S, 2) the bin's sample points (x, y); interpolated: (S,) their bilinear values;
    corner_terms: (S, 4) the weighted terms w_i v_i; reductions: {label: value of the bin};
    differences: (M,) |corner max - interpolated max| over many bins, for a histogram.
    """
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax_map, ax_bar, ax_hist = fig.subplots(1, 3, width_ratios=(1.2, 1, 1))
    h, w = patch.shape
    x0, y0 = origin
    ax_map.imshow(patch, cmap="coolwarm", extent=(x0 - 0.5, x0 + w - 0.5, y0 + h - 0.5, y0 - 0.5))
    for (i, j), value in np.ndenumerate(patch):
        ax_map.text(x0 + j, y0 + i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    left, top = points.min(axis=0) - 0.5 * np.ptp(points, axis=0)
    right, bottom = points.max(axis=0) + 0.5 * np.ptp(points, axis=0)
    ax_map.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, lw=1.5))
    lines = []
    for i, ((x, y), v, terms) in enumerate(zip(points, interpolated, corner_terms, strict=True)):
        ax_map.scatter([x], [y], color="k", s=22, zorder=3)
        ax_map.annotate(str(i + 1), (x, y), xytext=(4, 3), textcoords="offset points", fontsize=9)
        lines.append(f"sample {i + 1}: v = {v:+.2f}, largest w·v = {terms.max():+.2f}")
    ax_map.set_xlabel("\n".join(lines), fontsize=8)
    ax_map.set_title("one bin (black box), its 4 samples on the map", fontsize=9)
    labels = list(reductions)
    ax_bar.barh(labels, [reductions[k] for k in labels], color=COLOURS[: len(labels)])
    for i, k in enumerate(labels):
        ax_bar.text(reductions[k], i, f" {reductions[k]:.3f}", va="center", fontsize=8)
    ax_bar.axvline(0, color="k", lw=0.6)
    ax_bar.tick_params(labelsize=8)
    ax_bar.set_title("the bin's output under each reduction", fontsize=9)
    ax_hist.hist(differences, bins=40, color="tab:purple")
    ax_hist.set_xlabel("|ONNX max - max of interpolated samples|", fontsize=8)
    ax_hist.set_title(
        f"over {len(differences)} bins of N(0,1) maps: median {np.median(differences):.2f}, "
        f"max {differences.max():.2f}",
        fontsize=9,
    )
    return fig


def level_sweep(sides, by_rule, image_size):
    """The FPN level each rule gives square boxes of side ``sides`` (S,); by_rule: {rule: (S,)}."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.subplots()
    for i, (rule, level) in enumerate(by_rule.items()):
        ax.step(sides, level + 0.06 * (i - 1.5), where="post", label=rule, color=COLOURS[i], lw=1.6)
    first, last = list(by_rule.values())[0], list(by_rule.values())[-1]
    disagree = first != last
    ax.fill_between(sides, 1.7, 5.3, where=disagree, step="post", color="tab:red", alpha=0.12,
                    label=f"{list(by_rule)[0]} and {list(by_rule)[-1]} disagree")  # fmt: skip
    ax.set_xscale("log", base=2)
    ticks = [16, 32, 56, 80, 112, 160, 224, 320, 448, 640, 1024]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_yticks([2, 3, 4, 5], ["P2", "P3", "P4", "P5"])
    ax.set_xlabel("side of a square box (input pixels)")
    ax.set_title(
        f"Which pyramid level a box reads (image {image_size[0]}x{image_size[1]})", fontsize=10
    )
    ax.legend(fontsize=8, loc="upper left")
    return fig


def check_figure(case, matches):
    """``check --save-figure``: the RoI with the largest gap under the two closest rules.

    case: as roi_check.load_case returns it; matches: its ranked roi_variants.Match list.
    """
    first = matches[0]
    args = (case["features"], case["rois"], case["output_size"], case["spatial_scale"])
    gap = np.abs(roi_variants.run(first.name, *args, first.sampling_ratio or 0) - case["output"])
    k, c = np.unravel_index(np.argmax(gap.max(axis=(2, 3))), gap.shape[:2])
    roi = case["rois"][k : k + 1]
    # The runner-up is the rule that comes closest on that RoI, not on the whole case: the
    # one that best explains the departure.
    same = {first.name, *roi_variants.equivalents(first.name)}
    on_roi = roi_variants.identify(case["features"], roi, case["output"][k : k + 1], *args[2:])
    second = next(m for m in on_roi if m.name not in same)
    outs = [roi_variants.run(m.name, *args, m.sampling_ratio or 0) for m in (first, second)]
    fig = Figure(figsize=(18, 4), layout="constrained")
    ax_map, *ax_bins = fig.subplots(1, 5, width_ratios=(1.5, 1, 1, 1, 1))
    _show_map(ax_map, case["features"][int(roi[0, 0]), c], f"RoI {k}, channel {c}")
    for m, colour, marker in ((second, "tab:orange", "x"), (first, "tab:blue", "o")):
        ratio = m.sampling_ratio or 0
        _draw_rule(
            ax_map, m.name, roi, case["output_size"], case["spatial_scale"], ratio, colour, marker
        )
    checked = case["output"][k, c]
    panels = [("the output checked", checked)]
    for m, o in zip((first, second), outs, strict=True):
        ratio = "" if m.sampling_ratio is None else f" (sampling {m.sampling_ratio})"
        worst = np.abs(o[k, c] - checked).max()
        panels.append((f"{m.name}{ratio}\nmax gap {worst:.3g}", o[k, c]))
    panels.insert(2, (f"|output - {first.name}|", np.abs(outs[0][k, c] - checked)))
    for i, (ax, (title, values)) in enumerate(zip(ax_bins, panels, strict=True)):
        gap_panel = i == 2
        image = ax.imshow(
            values,
            cmap="Reds" if gap_panel else "viridis",
            vmin=0 if gap_panel else checked.min(),
            vmax=None if gap_panel else checked.max(),
        )
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]))
        ax.tick_params(labelsize=7)
        fig.colorbar(image, ax=ax, shrink=0.7)
    ax_map.set_xlabel(f"blue: {first.name}, orange: {second.name}", fontsize=8)
    return fig
