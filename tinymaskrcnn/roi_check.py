"""``tinymaskrcnn check CASE.npz``: which framework's RoIAlign rule produced an output.

A user exporting Mask R-CNN saves what their runtime was given and what it returned, and
asks: which rule did it apply, and if none of the known ones, where and why does it
depart from the closest? The case file (``np.savez``) holds:

    features        (N, C, H, W) maps (or (N, H, W, C) with --layout nhwc); aliases X, image
    rois            (K, 5) [batch_index, x1, y1, x2, y2] input-image pixels, or (K, 4) with
                    batch_indices (K,) (aliases boxes, box_indices); with
                    --boxes normalized-yxyx, TensorFlow's [y1, x1, y2, x2] over size - 1
    output          (K, C, ph, pw) (or (K, ph, pw, C) with --layout nhwc); aliases Y, crops
    spatial_scale   optional scalar, default 1
    sampling_ratio  optional scalar; every ratio 0..4 is tried anyway, and a match at
                    another one is reported (OpenVINO's ONNX importer quietly uses 1)

Shapes used below: N images, C channels, H x W maps, K RoIs, ph x pw output bins.
Exit status: 0 when a variant matches, 1 when none does, 2 on bad input.
"""

from __future__ import annotations

import sys

import numpy as np

from . import roi_variants

_ALIASES = {
    "features": ("features", "X", "image"),
    "rois": ("rois", "boxes"),
    "batch_indices": ("batch_indices", "box_indices", "box_ind"),
    "output": ("output", "Y", "crops"),
}
ATOL, RTOL = 1e-4, 1e-4


def _get(data, key, required=True):
    for alias in _ALIASES.get(key, (key,)):
        if alias in data:
            return np.asarray(data[alias])
    if required:
        raise ValueError(
            f"the case file has no {key!r} array (nor {', '.join(_ALIASES[key][1:])}); it "
            f"holds {sorted(data)}; expected features, rois (or rois (K, 4) + batch_indices) "
            "and output"
        )
    return None


def load_case(path, layout="nchw", boxes="xyxy"):
    """Read a case file into the project's convention (raises ValueError on bad input).

    layout: "nchw" or "nhwc" (TensorFlow: features (N, H, W, C), output (K, ph, pw, C)).
    boxes: "xyxy" (input pixels) or "normalized-yxyx" (TensorFlow's boxes, corner y at
        y * (H - 1) in cell-index units: here y = yn (H - 1) / spatial_scale).
    Returns a dict: features (N, C, H, W), rois (K, 5) float64, output (K, C, ph, pw),
    output_size (ph, pw), spatial_scale float, sampling_ratio int or None.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} as an .npz file ({error})") from None
    features, rois, output = _get(data, "features"), _get(data, "rois"), _get(data, "output")
    if layout == "nhwc":
        if features.ndim != 4 or output.ndim != 4:
            raise ValueError(
                f"--layout nhwc needs features (N, H, W, C) and output (K, ph, pw, C); got "
                f"{features.shape} and {output.shape}"
            )
        features, output = features.transpose(0, 3, 1, 2), output.transpose(0, 3, 1, 2)
    scale = float(data["spatial_scale"]) if "spatial_scale" in data else 1.0
    ratio = _get(data, "sampling_ratio", False)
    rois = np.asarray(rois, np.float64)
    if rois.ndim == 2 and rois.shape[1] == 4:
        batch = _get(data, "batch_indices", required=False)
        if batch is None and np.ndim(features) == 4 and features.shape[0] > 1:
            raise ValueError(
                f"rois are (K, 4) and features hold {features.shape[0]} images: add "
                "batch_indices (K,) to say which image each RoI reads"
            )
        batch = np.zeros(len(rois)) if batch is None else batch.reshape(-1)
        if batch.shape != (len(rois),):
            raise ValueError(f"batch_indices must be ({len(rois)},); got {batch.shape}")
        rois = np.concatenate([batch[:, None].astype(np.float64), rois], axis=1)
    elif rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"rois must be (K, 5) [batch_index, x1, y1, x2, y2] or (K, 4) with batch_indices; "
            f"got shape {rois.shape}"
        )
    if boxes == "normalized-yxyx":
        if np.ndim(features) != 4:
            raise ValueError(f"features must be 4-D; got shape {np.shape(features)}")
        h, w = features.shape[2:]
        y1, x1, y2, x2 = rois[:, 1:].T
        rois = np.stack([rois[:, 0], x1 * (w - 1), y1 * (h - 1), x2 * (w - 1), y2 * (h - 1)], 1)
        rois[:, 1:] /= scale
    if np.ndim(output) != 4:
        raise ValueError(f"output must be 4-D (K, C, ph, pw); got shape {np.shape(output)}")
    if np.issubdtype(output.dtype, np.number) and np.isnan(output).any():
        where = np.flatnonzero(np.isnan(output).reshape(len(output), -1).any(axis=1))
        raise ValueError(
            f"output has NaN in RoIs {where[:10].tolist()}: TensorRT's ROIAlign_TRT (avg) and "
            "OpenVINO's CPU plugin give NaN for a RoI of zero size under adaptive sampling "
            "(0 / 0); drop those RoIs, or save with sampling_ratio > 0, and check again"
        )
    return dict(
        features=features,
        rois=rois,
        output=output,
        output_size=tuple(int(s) for s in output.shape[2:]),
        spatial_scale=scale,
        sampling_ratio=None if ratio is None else int(ratio),
    )


def _matches(case, ratio=None, rois=None, output=None, spatial_scale=None):
    return roi_variants.identify(
        case["features"],
        case["rois"] if rois is None else rois,
        case["output"] if output is None else output,
        case["output_size"],
        case["spatial_scale"] if spatial_scale is None else spatial_scale,
        ratio,
        ATOL,
        RTOL,
    )


def _fit(case, name, ratio):
    return next(m.fraction_close for m in _matches(case, ratio) if m.name == name)


def ranked_matches(case):
    """identify over ratios 0..4 (and the file's), preferring the file's ratio on a tie."""
    matches = _matches(case)
    stated = case["sampling_ratio"]
    if stated is None:
        return matches
    given = {m.name: m for m in _matches(case, stated)}
    best = []
    for m in matches:
        g = given[m.name]
        keep = (g.fraction_close, -g.max_abs_error) >= (m.fraction_close, -m.max_abs_error)
        best.append(g if keep else m)
    return sorted(best, key=lambda m: (-m.fraction_close, m.max_abs_error))


def _ratio_text(m):
    if m.sampling_ratio is None:
        return "-"
    return "0 (adaptive)" if m.sampling_ratio <= 0 else str(m.sampling_ratio)


def _rule_difference(a, b, ratio_a, ratio_b):
    """In words, what differs between the rules of variants a and b (roi_variants.Variant)."""
    if a.sampler != b.sampler or a.method != b.method:
        return [f"a different operator ({b.sampler} {b.method} instead of {a.sampler})"]
    words = []
    if (a.shift_in, a.aligned) != (b.shift_in, b.aligned):
        words.append("the half-pixel shift")
    if a.aligned != b.aligned:
        words.append("the minimum RoI size of 1 cell")
    if (a.reduce, a.max_floor) != (b.reduce, b.max_floor):
        words.append(
            "max semantics (max of interpolated samples, max of weighted corners w_i v_i, "
            "or a max floored at 0)"
            if "avg" not in (a.reduce, b.reduce)
            else "the reduction (average vs max)"
        )
    if (a.empty, a.count_floor) != (b.empty, b.count_floor):
        words.append("what an empty sampling grid gives")
    if ratio_a != ratio_b and a.sampler == "bilinear":
        words.append(f"the sampling ratio ({ratio_a} vs {ratio_b})")
    return words or ["nothing in the rule: only this input's rounding"]


def diagnose(case, matches):
    """Where the closest variant departs from the output and the likely cause, in lines."""
    closest = matches[0]
    ratio = 0 if closest.sampling_ratio is None else closest.sampling_ratio
    f, rois, output = case["features"], case["rois"], case["output"]
    ours = roi_variants.run(
        closest.name, f, rois, case["output_size"], case["spatial_scale"], ratio
    )
    gap = np.nan_to_num(np.abs(ours - output), nan=np.inf)
    bad = gap > ATOL + RTOL * np.abs(output)
    bad_rois = np.flatnonzero(bad.any(axis=(1, 2, 3)))
    k, c, i, j = np.unravel_index(np.argmax(gap), gap.shape)
    lines = [
        f"closest: {closest.name} (sampling_ratio {_ratio_text(closest)}): {int(bad.sum())} of "
        f"{bad.size} outputs depart, in {len(bad_rois)} of {len(rois)} RoIs "
        f"{bad_rois[:8].tolist()}{' ...' if len(bad_rois) > 8 else ''}; largest gap "
        f"{gap.max():.3g} at RoI {k}, channel {c}, bin ({i}, {j}); median gap where it "
        f"departs {np.median(gap[bad]):.3g}"
    ]
    bins = bad[bad_rois].any(axis=(0, 1))
    edge = np.zeros_like(bins)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    where = "every bin" if bins.all() else "only border bins" if not (bins & ~edge).any() else ""
    where = where or f"{int(bins.sum())} of {bins.size} bin positions"
    lines.append(f"where: {where} of the departing RoIs")
    # Cause: the variant (or ratio) that best explains the departing RoIs, told as the
    # difference between its rule and the closest one's.
    sub = dict(case, rois=rois[bad_rois], output=output[bad_rois])
    same = {closest.name, *roi_variants.equivalents(closest.name)}
    own = _fit(sub, closest.name, ratio)
    other = next(
        (
            m
            for m in ranked_matches(sub)
            if m.name not in same or m.sampling_ratio != closest.sampling_ratio
        ),
        None,
    )
    if other is not None and other.fraction_close > own:
        a, b = roi_variants.rule(closest.name), roi_variants.rule(other.name)
        causes = _rule_difference(a, b, _ratio_text(closest), _ratio_text(other))
        lines.append(
            f"likely cause: {'; '.join(causes)}: on the departing RoIs {other.name} "
            f"(sampling_ratio {_ratio_text(other)}) fits "
            f"{100 * other.fraction_close:.0f}% of the outputs, {closest.name} {100 * own:.0f}%"
        )
    else:
        lines.append(
            f"likely cause: no known rule explains the departing outputs better than "
            f"{closest.name} ({100 * own:.0f}% of them fit): not a rule difference but a "
            "different operator, a modified output, or inputs saved apart from the output"
        )
    size = (rois[bad_rois, 3:] - rois[bad_rois, 1:3]) * case["spatial_scale"]
    if len(bad_rois) and (size < 1).any(axis=1).all():
        lines.append(
            "note: every departing RoI is under 1 feature cell on a side, where legacy rules "
            "stretch the RoI to 1 cell and aligned ones do not (nor sample it when adaptive)"
        )
    lines += _input_mistakes(case)
    return lines


def _input_mistakes(case):
    """Common slips to try when nothing matches: swapped x/y, a wrong spatial_scale."""
    few = slice(0, 16)  # enough RoIs to tell, cheap on a big case
    sub = dict(case, rois=case["rois"][few], output=case["output"][few])
    tries = [
        (
            "the boxes look like [y1, x1, y2, x2], not x1, y1, x2, y2",
            sub["rois"][:, [0, 2, 1, 4, 3]],
            None,
        )
    ]
    for factor in (2.0, 0.5, 4.0, 0.25):
        scale = case["spatial_scale"] * factor
        tries.append(
            (
                f"the output matches spatial_scale {scale:g}, not {case['spatial_scale']:g}",
                None,
                scale,
            )
        )
    lines = []
    for text, rois, scale in tries:
        best = _matches(sub, None, rois, None, scale)[0]
        if best.fraction_close == 1.0:
            lines.append(f"input slip: {text} ({best.name} then matches)")
    return lines


def check(path, layout="nchw", boxes="xyxy", save_figure=None, out=None, err=None) -> int:
    """Run ``tinymaskrcnn check``: print the ranked table and verdict; 0, 1 or 2 (bad input).

    path: the case .npz; layout, boxes: as for ``load_case``; save_figure: a PNG path for
    the RoI with the largest gap under the two closest rules; out, err: text streams
    (default stdout, stderr).
    """
    out, err = out or sys.stdout, err or sys.stderr
    try:
        case = load_case(path, layout, boxes)
        matches = ranked_matches(case)
    except ValueError as error:
        print(f"tinymaskrcnn check: {error}", file=err)
        return 2
    f, rois = case["features"], case["rois"]
    ph, pw = case["output_size"]
    stated = case["sampling_ratio"]
    print(
        f"{path}: features {tuple(f.shape)} {f.dtype}, {len(rois)} RoIs, output {ph}x{pw}, "
        f"spatial_scale {case['spatial_scale']:g}, sampling_ratio "
        + ("not given" if stated is None else f"{stated} (from the file)"),
        file=out,
    )
    print(f"{'variant':36s} {'sampling':>12s} {'max |error|':>12s} {'within tol':>11s}", file=out)
    for m in matches:
        print(
            f"{m.name:36s} {_ratio_text(m):>12s} {m.max_abs_error:12.3g} "
            f"{100 * m.fraction_close:10.1f}%",
            file=out,
        )
    winners = [m for m in matches if m.fraction_close == 1.0]
    if winners:
        best = winners[0]
        same = [m.name for m in winners[1:] if m.name in roi_variants.equivalents(best.name)]
        others = [m.name for m in winners[1:] if m.name not in same]
        ratio = "" if best.sampling_ratio is None else f" with sampling_ratio {_ratio_text(best)}"
        print(
            f"matches: {best.name}" + (f" (= {', '.join(same)})" if same else "") + ratio, file=out
        )
        if others:
            print(
                f"also consistent with this input: {', '.join(others)} (their rules differ "
                "only where this input does not reach)",
                file=out,
            )
        if stated is not None and best.sampling_ratio not in (None, stated):
            print(
                f"note: the file says sampling_ratio {stated}, the match is at "
                f"{best.sampling_ratio}; OpenVINO's ONNX importer uses 1 when a RoiAlign node "
                "has no sampling_ratio attribute, where the ONNX spec says 0 (adaptive)",
                file=out,
            )
    else:
        closest = matches[0]
        print(
            f"no variant matches; closest {closest.name} (sampling_ratio {_ratio_text(closest)}"
            f", {100 * closest.fraction_close:.1f}% within tolerance)",
            file=out,
        )
        for line in diagnose(case, matches):
            print(line, file=out)
    if save_figure:
        from .plotting.roi_variants import check_figure, save

        print(f"wrote {save(check_figure(case, matches), save_figure)}", file=out)
    return 0 if winners else 1
