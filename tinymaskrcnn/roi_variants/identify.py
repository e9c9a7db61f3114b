"""``identify``: every variant run against an output, ranked by how well it matches."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .sampling import check_array, check_inputs, run_many
from .table import VARIANTS

# --- identify ------------------------------------------------------------------------


class Match(NamedTuple):
    """How well one variant reproduces an output (``identify`` gives one per variant).

    sampling_ratio: the best of those tried (None for variants that take none);
    max_abs_error: largest |variant - output| (inf where the variant gives NaN);
    fraction_close: share of outputs within atol + rtol |output| (1.0: it matches).
    """

    name: str
    sampling_ratio: int | None
    max_abs_error: float
    fraction_close: float


def identify(
    features,
    rois,
    output,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=None,
    atol=1e-4,
    rtol=1e-4,
):
    """Which variant produced ``output``: every variant's Match, best first.

    features, rois, output_size, spatial_scale: as for ``run``.
    output: (K, C, ph, pw), the RoI features to explain, same frame and order as rois.
    sampling_ratio: None tries 0 (adaptive) to 4, so that e.g. OpenVINO's ONNX importer
        default shows up as "sampling_ratio 1"; an int tries that one only.
    Sorted by fraction_close (descending), then max_abs_error, then table order.
    """
    features, rois, output_size, scale = check_inputs(features, rois, output_size, spatial_scale)
    output = check_array(output, "output", 4, "(K, C, ph, pw) array").astype(np.float64)
    expected = (len(rois), features.shape[1], *output_size)
    if output.shape != expected:
        raise ValueError(
            f"output must be (K, C, ph, pw) = {expected} for {len(rois)} RoIs, "
            f"{features.shape[1]} channels and output_size {output_size}; got {output.shape}"
        )
    ratios = range(5) if sampling_ratio is None else [int(sampling_ratio)]
    order = {n: i for i, n in enumerate(VARIANTS)}

    def rank(m):
        return (-m.fraction_close, m.max_abs_error, order[m.name])

    # RoIAlign variants with the same geometry share one pass over the samples.
    groups = {}
    for v in VARIANTS.values():
        groups.setdefault(
            (v.shift_in, v.aligned) if v.sampler == "bilinear" else v.name, []
        ).append(v)
    best = {}
    for group in groups.values():
        for ratio in ratios if group[0].sampler == "bilinear" else [None]:
            outs = run_many(group, features, rois, output_size, scale, ratio)
            for name, candidate in outs.items():
                gap = np.nan_to_num(np.abs(candidate - output), nan=np.inf)  # NaN is never close
                close = (gap <= atol + rtol * np.abs(output)).mean() if gap.size else 1.0
                match = Match(name, ratio, float(gap.max(initial=0.0)), float(close))
                best[name] = min(best.get(name, match), match, key=rank)  # ties keep the first
    return sorted(best.values(), key=rank)
