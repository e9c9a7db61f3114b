"""RoIAlign across frameworks: each widely used rule as an exact reference (Mask R-CNN §3).

torchvision, ONNX, onnxruntime, OpenVINO, TensorRT, mmcv, Caffe2 and TensorFlow all cut a
RoI into bins and read the map by bilinear interpolation, yet give different numbers for
the same RoI: they differ in where the half-pixel shift goes, whether a RoI is stretched to
at least one cell, what "max" means and what an empty sampling grid gives. Each variant
is one row of parameters (``table.py``) and one shared sampler built on roi_ops'
geometry (``sampling.py``) turns any row into numbers, so two variants differ in code exactly where
they differ in rules. ``identify`` runs them all against an output to say which rule made
it (``identify.py``); ``levels`` gives the four ways frameworks pick an FPN level for a
box (``levels.py``). Everything public is importable from here.

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

from .identify import Match, identify
from .levels import level_mapping_names, levels
from .sampling import pool_bins, run, sample_points
from .table import Variant, describe, equivalents, names, rule

__all__ = [
    "Match",
    "Variant",
    "describe",
    "equivalents",
    "identify",
    "level_mapping_names",
    "levels",
    "names",
    "pool_bins",
    "rule",
    "run",
    "sample_points",
]
