"""RoI feature extraction: RoIPool (Fast R-CNN §2.1) and RoIAlign (Mask R-CNN §3).

One stage in five short modules, read in this order: ``checks`` (the arguments every
operator validates), ``align`` (RoIAlign, forward, backward and its sample points),
``pool`` (RoIPool), ``crop_and_resize`` (TensorFlow's, for comparison) and ``pyramid``
(``MultiScaleRoI``: each box from its FPN level). Everything is importable from here.

Each region of interest is cut out of a feature map and resampled to a fixed grid of
ph x pw bins. RoIPool rounds the RoI to the feature grid and rounds every bin border
again before taking a max; RoIAlign keeps the fractions and reads the map by bilinear
interpolation at regularly spaced sample points, which is what lets the mask head of
Mask R-CNN align pixels (paper §3, Table 2c). The semantics are torchvision's
(docs/architecture.md, RoI operators); tutorial 04 draws both.

Shapes used below:
    N: images       C: channels       H, W: feature-map height and width
    K: RoIs         ph, pw: pooled output height and width (bins per axis)
    gh, gw: sample points per bin along y and x (RoIAlign's sampling grid)
    L: pyramid levels given to MultiScaleRoIAlign (P2..P5, finest first)

RoIs are (K, 5) ``[batch_index, x1, y1, x2, y2]`` in input-image pixels;
``spatial_scale`` (e.g. 1/16 for a stride-16 map) takes them to the feature-map frame,
where pixel (i, j) covers [j, j+1) x [i, i+1).
"""

from .align import (
    bilinear_neighbours,
    roi_align,
    roi_align_backward,
    roi_align_geometry,
    roi_align_sampling_points,
)
from .crop_and_resize import crop_and_resize, crop_and_resize_points
from .pool import roi_pool, roi_pool_backward, roi_pool_bins
from .pyramid import ROI_OPS, MultiScaleRoI, MultiScaleRoIAlign

__all__ = [
    "ROI_OPS",
    "MultiScaleRoI",
    "MultiScaleRoIAlign",
    "bilinear_neighbours",
    "crop_and_resize",
    "crop_and_resize_points",
    "roi_align",
    "roi_align_backward",
    "roi_align_geometry",
    "roi_align_sampling_points",
    "roi_pool",
    "roi_pool_backward",
    "roi_pool_bins",
]
