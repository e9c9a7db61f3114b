"""The table of variants: each framework's RoIAlign (or RoIPool, crop_and_resize) rule as
one row of parameters, the source it was read from, and the words ``describe`` prints."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


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
VARIANTS = {
    v.name: v for v in [Variant(r[0], r[7], "bilinear", *r[1:7]) for r in _BILINEAR] + _OTHERS
}


def names() -> list[str]:
    """Every variant's name, in table order (torchvision first)."""
    return list(VARIANTS)


def lookup(table, name, what):
    if name not in table:
        close = difflib.get_close_matches(str(name), table, n=4, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown {what} {name!r}; {hint}known: {', '.join(table)}")
    return table[name]


def rule(name) -> Variant:
    """The parameters of variant ``name``; an unknown name raises ValueError with close ones."""
    return lookup(VARIANTS, name, "RoI variant")


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
    return [n for n, v in VARIANTS.items() if n != name and _rule_key(v) == key]


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
