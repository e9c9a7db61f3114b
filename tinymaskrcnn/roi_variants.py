"""RoIAlign across frameworks: each widely used rule as an exact reference (Mask R-CNN §3).

torchvision, ONNX, onnxruntime, OpenVINO, TensorRT, mmcv, Caffe2 and TensorFlow all cut a
RoI into bins and read the map by bilinear interpolation, yet give different numbers for
the same RoI: they differ in where the half-pixel shift goes, whether a RoI is stretched to
at least one cell, what "max" means and what an empty sampling grid gives. Each variant
is one row of parameters (``_BILINEAR``, ``_OTHERS``) and one shared sampler built on
roi_ops' geometry turns any row into numbers, so two variants differ in code exactly where
they differ in rules. ``identify`` runs them all against an output to say which rule made
it; ``levels`` gives the four ways frameworks pick an FPN level for a box.

Shapes used below:
    N: images       C: channels       H, W: feature-map height and width
    K: RoIs         ph, pw: output bins per axis
    gh, gw: samples per bin along y and x

Every variant takes the project's one convention and converts to its framework's own:
features (N, C, H, W); rois (K, 5) ``[batch_index, x1, y1, x2, y2]`` in input-image
pixels; ``spatial_scale`` takes them to the feature map; ``sampling_ratio <= 0`` is
adaptive (ceil(roi size / output size) per axis). Sample points are in cell-index units
(cell (i, j) centred on x = j, y = i), as in roi_ops.

Like roi_ops, the RoIAlign geometry is computed in float64 where the frameworks use the
features' float32: the numbers agree to float32 rounding (tested against onnxruntime,
OpenVINO and TensorFlow), except that a sample landing within rounding of the map's
outer limit (-1 or H) may fall on the other side of it, where the bilinear rule jumps
from the edge value to 0. TensorFlow's crop_and_resize is reproduced in float32 throughout,
since its in-bounds test at exactly 0 and size - 1 is hit by ordinary boxes.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .roi_ops import (
    bilinear_neighbours,
    roi_align_geometry,
    roi_align_sampling_points,
    roi_pool,
    roi_pool_bins,
)


@dataclass(frozen=True)
class Variant:
    """One framework's RoI operator as the parameters of the shared sampler.

    family: key of ``_SOURCES``, the framework files and versions the rules come from.
    sampler: "bilinear" (RoIAlign), "crop_and_resize" (TensorFlow) or "roi_pool".
    shift_in: added to the RoI corners before ``spatial_scale`` (OpenVINO half_pixel).
    aligned: subtract 0.5 after ``spatial_scale`` and drop the 1-cell minimum size.
    reduce: "avg"; "max" (of the interpolated samples); "corner" (the max over samples of
        the largest weighted corner term w_i v_i, the ONNX reference's "max").
    max_floor: the max starts from 0 instead of the first sample: never negative.
    empty: what a max bin without samples gives; count_floor: an average divides by
        max(gh gw, 1) (False: by gh gw, so an empty grid gives 0 / 0 = NaN).
    method: "bilinear"/"nearest" (crop_and_resize), "torchvision"/"mmcv" (roi_pool).
    """

    name: str
    family: str
    sampler: str = "bilinear"
    shift_in: float = 0.0
    aligned: bool = False
    reduce: str = "avg"
    max_floor: bool = False
    empty: float = 0.0
    count_floor: bool = True
    method: str = "bilinear"


# Where each family's rules were read (file and version); describe() prints these.
_SOURCES = {
    "torchvision": "torchvision 0.2x torchvision.ops.roi_align, csrc/ops/cpu/roi_align_kernel.cpp",
    "onnx-10": "ONNX RoiAlign-10 (no coordinate_transformation_mode): onnx 1.22.0 "
    "onnx/reference/ops/op_roi_align.py; onnxruntime providers/cpu/object_detection/"
    "roialign.cc and providers/cuda/object_detection/roialign_impl.cu",
    "onnx-16": "ONNX RoiAlign-16 (coordinate_transformation_mode as named, default half_pixel): "
    "onnx 1.22.0 onnx/reference/ops/op_roi_align.py; onnxruntime roialign.cc, roialign_impl.cu",
    "openvino": "OpenVINO ROIAlign-9 (aligned_mode as named): OpenVINO 2025 src/core/reference/"
    "include/openvino/reference/roi_align.hpp and plugins/intel_cpu/src/nodes/roi_align.cpp",
    "mmcv": "mmcv 2.2.0 mmcv.ops.RoIAlign (aligned=True unless 'legacy'), "
    "ops/csrc/pytorch/cpu/roi_align.cpp and common/cuda/roi_align_cuda_kernel.cuh",
    "tensorrt": "TensorRT ROIAlign_TRT plugin, coordinate_transformation_mode=1 (its default): "
    "TensorRT 10 plugin/roiAlignPlugin/roiAlignKernel.cu",
    "caffe2": "Caffe2 RoIAlign, as Detectron v1 and maskrcnn-benchmark use it: "
    "caffe2/operators/roi_align_op.cc (PyTorch 1.x)",
    "tensorflow": "TensorFlow tf.image.crop_and_resize, core/kernels/image/"
    "crop_and_resize_op.cc (TF 2.x), the op matterport's PyramidROIAlign (mrcnn/model.py) calls",
    "torchvision-pool": "torchvision 0.2x torchvision.ops.roi_pool, "
    "csrc/ops/cpu/roi_pool_kernel.cpp",
    "mmcv-pool": "mmcv 2.2.0 mmcv.ops.RoIPool, ops/csrc/common/cuda/roi_pool_cuda_kernel.cuh "
    "(CUDA only: mmcv has no CPU RoIPool)",
}
_ORT = (
    "onnxruntime has logged 'will be fixed in the next ORT 1.13 release' for mode=max "
    "(roialign.h) since 1.12 and still computes this weighted-corner max (onnxruntime#6146)."
)
_NOTES = {
    "onnx-10": _ORT,
    "onnx-16": _ORT,
    "openvino": "OpenVINO's ONNX importer (frontends/onnx/frontend/src/op/roi_align.cpp) "
    "defaults sampling_ratio to 1 where the ONNX spec says 0 (adaptive); its CPU plugin's JIT "
    "path scales an empty adaptive grid by 1 / 0 and gives NaN where the reference gives 0.",
    "mmcv": "mmcv's CUDA kernel starts its max at -FLT_MAX where the CPU one starts at -10000; "
    "the CPU kernel refuses a negative-size RoI when aligned.",
}

# The RoIAlign rows: shift_in, aligned, reduce, max_floor, empty (max of no samples),
# count_floor, family. Read across a row to see everything a framework decides.
# fmt: off
_BILINEAR = [
    ("torchvision",                    0.0, False, "avg",    False, 0.0,  True,  "torchvision"),
    ("torchvision-aligned",            0.0, True,  "avg",    False, 0.0,  True,  "torchvision"),
    ("onnx-10-avg",                    0.0, False, "avg",    False, 0.0,  True,  "onnx-10"),
    ("onnx-10-max",                    0.0, False, "corner", False, 0.0,  True,  "onnx-10"),
    ("onnx-16-avg",                    0.0, True,  "avg",    False, 0.0,  True,  "onnx-16"),
    ("onnx-16-max",                    0.0, True,  "corner", False, 0.0,  True,  "onnx-16"),
    ("onnx-16-output_half_pixel-avg",  0.0, False, "avg",    False, 0.0,  True,  "onnx-16"),
    ("onnx-16-output_half_pixel-max",  0.0, False, "corner", False, 0.0,  True,  "onnx-16"),
    ("openvino-asymmetric-avg",        0.0, False, "avg",    False, 0.0,  True,  "openvino"),
    ("openvino-asymmetric-max",        0.0, False, "max",    True,  0.0,  True,  "openvino"),
    ("openvino-half_pixel_for_nn-avg", 0.0, True,  "avg",    False, 0.0,  True,  "openvino"),
    ("openvino-half_pixel_for_nn-max", 0.0, True,  "max",    True,  0.0,  True,  "openvino"),
    ("openvino-half_pixel-avg",        0.5, True,  "avg",    False, 0.0,  True,  "openvino"),
    ("openvino-half_pixel-max",        0.5, True,  "max",    True,  0.0,  True,  "openvino"),
    ("mmcv-avg",                       0.0, True,  "avg",    False, 0.0,  True,  "mmcv"),
    ("mmcv-max",                       0.0, True,  "max",    False, -1e4, True,  "mmcv"),
    ("mmcv-legacy-avg",                0.0, False, "avg",    False, 0.0,  True,  "mmcv"),
    ("mmcv-legacy-max",                0.0, False, "max",    False, -1e4, True,  "mmcv"),
    ("tensorrt-avg",                   0.0, True,  "avg",    False, 0.0,  False, "tensorrt"),
    ("tensorrt-max",                   0.0, True,  "corner", False, 0.0,  True,  "tensorrt"),
    ("caffe2",                         0.0, False, "avg",    False, 0.0,  False, "caffe2"),
]
_OTHERS = [
    Variant("tensorflow-crop_and_resize", "tensorflow", "crop_and_resize"),
    Variant("tensorflow-crop_and_resize-nearest", "tensorflow", "crop_and_resize",
            method="nearest"),
    Variant("torchvision-roi_pool", "torchvision-pool", "roi_pool", method="torchvision"),
    Variant("mmcv-roi_pool", "mmcv-pool", "roi_pool", method="mmcv"),
]
# fmt: on
_VARIANTS = {
    v.name: v for v in [Variant(r[0], r[7], "bilinear", *r[1:7]) for r in _BILINEAR] + _OTHERS
}


def names() -> list[str]:
    """Every variant's name, in table order (torchvision first)."""
    return list(_VARIANTS)


def _lookup(table, name, what):
    if name not in table:
        close = difflib.get_close_matches(str(name), table, n=4, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown {what} {name!r}; {hint}known: {', '.join(table)}")
    return table[name]


def rule(name) -> Variant:
    """The parameters of variant ``name``; an unknown name raises ValueError with close ones."""
    return _lookup(_VARIANTS, name, "RoI variant")


def _rule_key(v):
    """What decides v's numbers: two variants with one key agree on every input."""
    if v.sampler != "bilinear":
        return (v.sampler, v.method)
    # Without `aligned` every RoI is at least 1 cell, so an adaptive grid always has a
    # sample per axis and what an empty grid gives never shows.
    empty = (v.empty if v.reduce != "avg" else v.count_floor) if v.aligned else None
    return (v.shift_in, v.aligned, v.reduce, v.max_floor, empty)


def equivalents(name) -> list[str]:
    """The other names whose rule gives exactly the same numbers as ``name`` on any input."""
    key = _rule_key(rule(name))
    return [n for n, v in _VARIANTS.items() if n != name and _rule_key(v) == key]


_FIXED_RULES = {  # the samplers without RoIAlign's parameters, in words
    "bilinear": "crop_and_resize: no bins; crop_h x crop_w samples from corner to corner of "
    "the box (its centre on an axis of 1), each the bilinear value",
    "nearest": "crop_and_resize: no bins; crop_h x crop_w samples from corner to corner of the "
    "box, each the value of its nearest cell (C roundf: halves away from zero)",
    "torchvision": "RoIPool: corners times s rounded (C round), inclusive end (+1), at least 1 "
    "cell; bins from floor/ceil of float bin edges, clipped to the map; the max of each bin, "
    "0 for an empty one.",
    "mmcv": "RoIPool without the first rounding: x1 s and (x2 + 1) s stay floats; bins from "
    "floor/ceil of float bin edges, clipped to the map; the max of each bin, 0 for an empty "
    "one or a RoI of size <= 0.",
}
_TF_FRAME = (
    "; a sample outside [0, size - 1] gives extrapolation_value 0. TensorFlow takes NHWC maps "
    "and [y1, x1, y2, x2] boxes normalised by size - 1: here a corner x lands at x s in "
    "cell-index units, over W - 1 (0 when W = 1), in float32 as TensorFlow computes it."
)


def _rules_text(v):
    if v.sampler != "bilinear":
        return _FIXED_RULES[v.method] + (_TF_FRAME if v.sampler == "crop_and_resize" else "")
    shift = {(0.0, False): "x s", (0.0, True): "x s - 0.5", (0.5, True): "(x + 0.5) s - 0.5"}
    reduce = {
        "avg": "the mean of its samples" + ("" if v.count_floor else " (over gh gw, no floor)"),
        "max": "the max of its interpolated samples" + (" and 0" if v.max_floor else ""),
        "corner": "the max over samples of max(w1 v1, w2 v2, w3 v3, w4 v4), weighted corners",
    }[v.reduce]
    empty = ("0" if v.count_floor else "0 / 0 = NaN") if v.reduce == "avg" else f"{v.empty:g}"
    return (
        f"RoIAlign: a corner x goes to {shift[v.shift_in, v.aligned]} (cell-index units), "
        + ("no minimum size" if v.aligned else "the RoI stretched to at least 1 x 1 cell")
        + "; sampling_ratio^2 samples per bin (ceil(size / output) per axis when <= 0); a "
        "sample more than 1 cell outside the map reads 0, one on the border strip the edge "
        f"cells; each bin is {reduce}; an empty sampling grid gives {empty}."
    )


def describe(name) -> str:
    """Framework, op and version ``name`` follows, its rules, and its numerical equivalents."""
    v, same = rule(name), equivalents(name)
    text = f"{name} follows {_SOURCES[v.family]}. {_rules_text(v)} "
    text += f"Numerically the same rule as: {', '.join(same)}." if same else "No other name here"
    text += "" if same else " gives the same numbers."
    return text + (f" {_NOTES[v.family]}" if v.family in _NOTES else "")


# --- argument checks -----------------------------------------------------------------


def _check_array(array, arg, ndim, form):
    array = np.asarray(array)
    if array.ndim != ndim or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{arg} must be a numeric {form}; got shape {array.shape}, {array.dtype}")
    if not np.isfinite(array).all():
        where = np.argwhere(~np.isfinite(array))[:3].tolist()
        raise ValueError(f"{arg} must be finite; NaN or inf at index {where} (first ones)")
    return array


def _check_inputs(features, rois, output_size, spatial_scale):
    features = _check_array(features, "features", 4, "(N, C, H, W) array")
    if features.dtype not in (np.float32, np.float64):
        features = features.astype(np.float32)
    n, _, h, w = features.shape
    if h < 1 or w < 1:
        raise ValueError(f"features must have H, W >= 1; got shape {features.shape}")
    rois = _check_array(rois, "rois", 2, "(K, 5) [batch_index, x1, y1, x2, y2] array")
    if rois.shape[1] != 5:
        raise ValueError(f"rois must be (K, 5) [batch_index, x1, y1, x2, y2]; got {rois.shape}")
    rois, batch = rois.astype(np.float64), rois[:, 0]
    bad = (batch != np.round(batch)) | (batch < 0) | (batch >= n)
    if bad.any():
        raise ValueError(
            f"rois[:, 0] must be batch indices in [0, {n}) (features has N = {n}); "
            f"row {int(np.flatnonzero(bad)[0])} has {batch[bad][0]:g}"
        )
    size = (output_size, output_size) if np.isscalar(output_size) else tuple(output_size)
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"output_size must be an int >= 1 or (ph, pw) of such; got {output_size}")
    scale = float(spatial_scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"spatial_scale must be a positive number; got {spatial_scale}")
    return features, rois, (int(size[0]), int(size[1])), scale


# --- the shared sampler -------------------------------------------------------------


def _bilinear(group, features, rois, output_size, scale, ratio):
    """{name: (K, C, ph, pw)} for RoIAlign variants that share shift_in and aligned."""
    shifted = rois.copy()
    shifted[:, 1:] += group[0].shift_in  # OpenVINO half_pixel: (x + 0.5) s - 0.5
    points = roi_align_sampling_points(shifted, output_size, scale, ratio, group[0].aligned)
    bin_w, bin_h = roi_align_geometry(shifted, output_size, scale, ratio, group[0].aligned)[3:5]
    # gh gw before roi_ops clamps a negative ceil to 0: TensorRT divides by this count.
    count = np.full(len(rois), ratio * ratio) if ratio > 0 else np.ceil(bin_h) * np.ceil(bin_w)
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    outs = {v.name: np.empty((len(rois), c, *output_size), features.dtype) for v in group}
    for k, (batch, roi_points) in enumerate(zip(rois[:, 0].astype(np.int64), points, strict=True)):
        if roi_points[0, 0].size == 0:  # an empty adaptive grid: a zero-size aligned RoI
            for v in group:
                avg = 0.0 if v.count_floor or count[k] != 0 else np.nan
                outs[v.name][k] = avg if v.reduce == "avg" else v.empty
            continue
        index, weight = bilinear_neighbours(roi_points, h, w)
        # (C, ph, pw, gh, gw, 4): each corner's weighted term w_i v_i; a sample is their
        # sum. The same products and sum as roi_ops.roi_align, so torchvision's numbers.
        corners = flat[batch][:, index] * weight
        samples = corners.sum(-1)
        for v in group:
            if v.reduce == "avg":
                value = samples.mean(axis=(-2, -1))
            elif v.reduce == "max":
                value = samples.max(axis=(-2, -1))
            else:  # the ONNX reference's max(w1 v1, ..., w4 v4) per sample, then over samples
                value = corners.max(-1).max(axis=(-2, -1))
            outs[v.name][k] = np.maximum(value, 0.0) if v.max_floor else value
    return outs


def _tf_axis(rois, lo, hi, n, size, scale):
    """TensorFlow's in_y (or in_x) of every crop row, (K, n) float32 as crop_and_resize_op.cc.

    lo, hi: the columns of rois holding the box's edges along this axis; the corners are
    normalised by size - 1 (TensorFlow maps them back to cell-index units by the same).
    """
    a, b = ((rois[:, i] * scale / max(size - 1, 1)).astype(np.float32) for i in (lo, hi))
    if n == 1:  # 0.5 * (y1 + y2) * (H - 1): a float sum, then double arithmetic, then float
        return (0.5 * (a + b).astype(np.float64) * (size - 1)).astype(np.float32)[:, None]
    step = (b - a) * np.float32(size - 1) / np.float32(n - 1)
    return a[:, None] * np.float32(size - 1) + np.arange(n, dtype=np.float32) * step[:, None]


def _crop_and_resize(v, features, rois, crop_size, scale):
    n, c, h, w = features.shape
    y = _tf_axis(rois, 2, 4, crop_size[0], h, scale)
    x = _tf_axis(rois, 1, 3, crop_size[1], w, scale)
    inside = ((y >= 0) & (y <= h - 1))[:, :, None] & ((x >= 0) & (x <= w - 1))[:, None, :]
    y, x = np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)  # outside samples are replaced below
    out = np.empty((len(rois), c, *crop_size), features.dtype)
    for k, f in enumerate(features[rois[:, 0].astype(np.int64)]):
        top, left = np.floor(y[k]).astype(np.int64), np.floor(x[k]).astype(np.int64)
        ly, lx = (y[k] - top).astype(f.dtype)[:, None], (x[k] - left).astype(f.dtype)
        if v.method == "nearest":  # roundf, halves away from zero (y, x >= 0 here)
            value = f[:, (top + (ly[:, 0] >= 0.5))[:, None], left + (lx >= 0.5)]
        else:
            t, b = top[:, None], np.ceil(y[k]).astype(np.int64)[:, None]
            right = np.ceil(x[k]).astype(np.int64)
            upper = f[:, t, left] + (f[:, t, right] - f[:, t, left]) * lx
            lower = f[:, b, left] + (f[:, b, right] - f[:, b, left]) * lx
            value = upper + (lower - upper) * ly
        out[k] = np.where(inside[k], value, 0.0)
    return out


def _mmcv_bins(rois, output_size, scale, height, width, t):
    """mmcv RoIPool's bins: float corners x1 s, (x2 + 1) s, float bin edges, floor/ceil, clip.

    t: the features' scalar type, in which the CUDA kernel computes. Returns y0, y1 (K, ph),
    x0, x1 (K, pw) int64 cells (bin (i, j) is rows y0[i]:y1[i], columns x0[j]:x1[j]) and
    ``valid`` (K,): False for a RoI of size <= 0, which the kernel skips (output 0).
    """
    lo = rois[:, 1:3].astype(t) * t(scale)  # (K, 2) x1, y1
    hi = (rois[:, 3:5].astype(t) + t(1)) * t(scale)

    def borders(axis, pooled, limit):
        i = np.arange(pooled, dtype=t)
        size = ((hi[:, axis] - lo[:, axis]) / t(pooled))[:, None]
        start = np.floor(i * size + lo[:, axis, None]).astype(np.int64)
        end = np.ceil((i + t(1)) * size + lo[:, axis, None]).astype(np.int64)
        return np.clip(start, 0, limit), np.clip(end, 0, limit)

    (y0, y1), (x0, x1) = borders(1, output_size[0], height), borders(0, output_size[1], width)
    return y0, y1, x0, x1, (hi - lo > 0).all(axis=1)


def _mmcv_roi_pool(features, rois, output_size, scale):
    n, c, h, w = features.shape
    y0, y1, x0, x1, valid = _mmcv_bins(rois, output_size, scale, h, w, features.dtype.type)
    out = np.zeros((len(rois), c, *output_size), features.dtype)
    for k, batch in enumerate(rois[:, 0].astype(np.int64)):
        for i in range(output_size[0] if valid[k] else 0):
            for j in range(output_size[1]):
                window = features[batch, :, y0[k, i] : y1[k, i], x0[k, j] : x1[k, j]]
                if window.size:
                    out[k, :, i, j] = window.reshape(c, -1).max(axis=1)
    return out


def pool_bins(name, rois, output_size, feature_size, spatial_scale=1.0):
    """The cells each bin of a RoIPool variant takes its max over (for drawing).

    rois: (K, 5) input pixels; feature_size: (H, W). Returns y0, y1 (K, ph) and x0, x1
    (K, pw) int64: bin (i, j) of RoI k covers rows y0[k, i]:y1[k, i], columns x0[k, j]:x1[k, j].
    """
    rois, (h, w) = np.asarray(rois, np.float64).reshape(-1, 5), feature_size
    size = (output_size,) * 2 if np.isscalar(output_size) else tuple(output_size)
    if rule(name).method == "mmcv":
        return _mmcv_bins(rois, size, spatial_scale, h, w, np.float32)[:4]
    if rule(name).sampler != "roi_pool":
        raise ValueError(f"{name} samples points (see sample_points), it has no RoIPool bins")
    return roi_pool_bins(rois, size, spatial_scale, h, w)


def _run_many(group, features, rois, output_size, scale, ratio):
    """{name: output} for one sampler's variants (bilinear ones must share their geometry)."""
    v = group[0]
    if v.sampler == "bilinear":
        return _bilinear(group, features, rois, output_size, scale, int(ratio))
    if v.sampler == "crop_and_resize":
        return {v.name: _crop_and_resize(v, features, rois, output_size, scale)}
    if v.method == "torchvision":
        return {v.name: roi_pool(features, rois, output_size, scale)[0]}
    return {v.name: _mmcv_roi_pool(features, rois, output_size, scale)}


def run(name, features, rois, output_size, spatial_scale=1.0, sampling_ratio=0):
    """RoI features as variant ``name`` computes them.

    features: (N, C, H, W) float32 or float64 maps (other dtypes become float32).
    rois: (K, 5) [batch_index, x1, y1, x2, y2], input-image pixels.
    output_size: int or (ph, pw). spatial_scale: feature cells per input pixel.
    sampling_ratio: samples per bin per axis, <= 0 adaptive (crop_and_resize and RoIPool
        variants take none and ignore it).
    Returns (K, C, ph, pw) in the features' dtype. ``tensorrt-avg`` gives NaN, as
    TensorRT does, for a RoI whose adaptive grid is empty, and warns which RoIs.
    """
    v = rule(name)
    features, rois, output_size, scale = _check_inputs(features, rois, output_size, spatial_scale)
    out = _run_many([v], features, rois, output_size, scale, sampling_ratio)[name]
    if np.isnan(out).any():
        warnings.warn(
            f"{name}: RoIs {np.flatnonzero(np.isnan(out).any(axis=(1, 2, 3))).tolist()} have "
            "an empty sampling grid (zero size, adaptive sampling); TensorRT divides 0 by 0 "
            "there, so these outputs are NaN as TensorRT's are",
            RuntimeWarning,
            stacklevel=2,
        )
    return out


def sample_points(name, rois, output_size, feature_size, spatial_scale=1.0, sampling_ratio=0):
    """Where variant ``name`` reads the map: K float64 arrays (ph, pw, gh, gw, 2) of (x, y).

    rois: (K, 5) input-image pixels; feature_size: (H, W). Cell-index units, before any
    clamping; crop_and_resize has gh = gw = 1. RoIPool variants read whole cells, not
    points, and raise ValueError.
    """
    v, rois = rule(name), np.asarray(rois, np.float64).reshape(-1, 5)
    if v.sampler == "roi_pool":
        raise ValueError(f"{name} reads whole cells (RoIPool bins), not sample points")
    if v.sampler == "bilinear":
        shifted = rois.copy()
        shifted[:, 1:] += v.shift_in
        return roi_align_sampling_points(
            shifted, output_size, spatial_scale, sampling_ratio, v.aligned
        )
    ph, pw = (output_size,) * 2 if np.isscalar(output_size) else output_size
    h, w = feature_size
    points = np.empty((len(rois), ph, pw, 1, 1, 2))
    points[..., 0] = _tf_axis(rois, 1, 3, pw, w, spatial_scale)[:, None, :, None, None]
    points[..., 1] = _tf_axis(rois, 2, 4, ph, h, spatial_scale)[:, :, None, None, None]
    return list(points)


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
    features, rois, output_size, scale = _check_inputs(features, rois, output_size, spatial_scale)
    output = _check_array(output, "output", 4, "(K, C, ph, pw) array").astype(np.float64)
    expected = (len(rois), features.shape[1], *output_size)
    if output.shape != expected:
        raise ValueError(
            f"output must be (K, C, ph, pw) = {expected} for {len(rois)} RoIs, "
            f"{features.shape[1]} channels and output_size {output_size}; got {output.shape}"
        )
    ratios = range(5) if sampling_ratio is None else [int(sampling_ratio)]
    order = {n: i for i, n in enumerate(_VARIANTS)}

    def rank(m):
        return (-m.fraction_close, m.max_abs_error, order[m.name])

    # RoIAlign variants with the same geometry share one pass over the samples.
    groups = {}
    for v in _VARIANTS.values():
        groups.setdefault(
            (v.shift_in, v.aligned) if v.sampler == "bilinear" else v.name, []
        ).append(v)
    best = {}
    for group in groups.values():
        for ratio in ratios if group[0].sampler == "bilinear" else [None]:
            outs = _run_many(group, features, rois, output_size, scale, ratio)
            for name, candidate in outs.items():
                gap = np.nan_to_num(np.abs(candidate - output), nan=np.inf)  # NaN is never close
                close = (gap <= atol + rtol * np.abs(output)).mean() if gap.size else 1.0
                match = Match(name, ratio, float(gap.max(initial=0.0)), float(close))
                best[name] = min(best.get(name, match), match, key=rank)  # ties keep the first
    return sorted(best.values(), key=rank)


# --- FPN level mapping (FPN paper eq. 1, as each framework rounds it) ----------------

_LEVEL_SOURCES = {
    "torchvision": "torchvision/ops/poolers.py LevelMapper: floor(4 + log2(sqrt(w h) / 224) "
    "+ 1e-6)",
    "detectron2": "detectron2/modeling/poolers.py assign_boxes_to_levels: floor(4 + "
    "log2(sqrt(area) / 224 + eps)), eps = sys.float_info.epsilon",
    "mmdet": "mmdet SingleRoIExtractor.map_roi_levels: k_min + floor(log2(sqrt(w h) / 56 + "
    "1e-6)) (finest_scale 56, level 0 = the first map given)",
    "matterport": "matterport mrcnn/model.py PyramidROIAlign: 4 + tf.round(log2(sqrt(h w) / "
    "(224 / sqrt(image_area)))), boxes normalised by utils.norm_boxes",
}


def level_mapping_names() -> list[str]:
    """The level-mapping rules ``levels`` knows: torchvision, detectron2, mmdet, matterport."""
    return list(_LEVEL_SOURCES)


def levels(name, boxes, image_size, k_min=2, k_max=5):
    """The pyramid level (k_min..k_max, e.g. 2 = P2) each box reads under rule ``name``.

    boxes: (K, 4) x1, y1, x2, y2, input-image pixels; computed in float32 unless float64
        is given, as the frameworks compute in the boxes' dtype. image_size: (height, width).
    Returns (K,) int64; a degenerate box (zero or negative area) goes to k_min. matterport
    first normalises like its utils.norm_boxes, (y1, x1, y2 - 1, x2 - 1) / (size - 1), and
    rounds with tf.round (halves to even); the others floor.
    """
    _lookup(_LEVEL_SOURCES, name, "level mapping")
    boxes = _check_array(boxes, "boxes", 2, "(K, 4) x1, y1, x2, y2 array")
    if boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4) x1, y1, x2, y2; got shape {boxes.shape}")
    t = np.float64 if boxes.dtype == np.float64 else np.float32
    boxes, (height, width) = boxes.astype(t), (int(s) for s in image_size)
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "torchvision":
            k = np.floor(t(4) + np.log2(side / t(224)) + t(1e-6))
        elif name == "detectron2":  # eps is a Python float added to a float32 tensor
            k = np.floor(t(4) + np.log2(side / t(224) + t(np.finfo(np.float64).eps)))
        elif name == "mmdet":
            k = k_min + np.floor(np.log2(side / t(56) + t(1e-6)))
        else:
            h = (boxes[:, 3] - t(1) - boxes[:, 1]) / t(height - 1)
            w = (boxes[:, 2] - t(1) - boxes[:, 0]) / t(width - 1)
            ratio = np.sqrt(h * w) / (t(224) / np.sqrt(t(height * width)))
            k = t(4) + np.round(np.log(ratio) / np.log(t(2)))  # log2_graph: log(x) / log(2)
    k = np.nan_to_num(k, nan=k_min, neginf=k_min, posinf=k_max)
    return np.clip(k, k_min, k_max).astype(np.int64)
