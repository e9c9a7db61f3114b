"""RoIAlign (Mask R-CNN §3): bilinear samples at regularly spaced points of every bin.

RoIAlign keeps the RoI's fractions and reads the map by bilinear interpolation at
gh x gw sample points per bin, which is what lets the mask head align pixels (paper
Table 2c). ``roi_align_geometry`` is the per-RoI geometry every backend samples from.

Shapes used below: N images, C channels, H x W the map, K RoIs, ph x pw bins, gh x gw
samples per bin.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .checks import check_backward, check_features, check_output_size, check_rois, check_scale

# --- RoIAlign -----------------------------------------------------------------------


def roi_align_geometry(rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """Where each RoI lies on the feature map and how densely its bins are sampled.

    rois: (K, 5) float64, checked, input-image pixels.
    Returns, all (K,): ``batch`` int64; ``start_x``, ``start_y`` (RoI corner) and
    ``bin_w``, ``bin_h`` (bin size) float64 in cell-index units; ``grid_h``,
    ``grid_w`` int64 samples per bin (0 when an adaptive grid meets an empty RoI).
    The NumPy reference and every kernel place their samples from these numbers.
    """
    ph, pw = output_size
    # Samples live in cell-index units (cell centres at integers): a pixel-frame
    # coordinate x is x - 0.5 there, which aligned=True applies
    # (docs/architecture.md, Frames and pixels). The legacy
    # mode skips the shift and instead forces every RoI to be at least 1 cell wide.
    offset = 0.5 if aligned else 0.0
    start_x = rois[:, 1] * spatial_scale - offset
    start_y = rois[:, 2] * spatial_scale - offset
    width = rois[:, 3] * spatial_scale - offset - start_x
    height = rois[:, 4] * spatial_scale - offset - start_y
    if not aligned:
        width = np.maximum(width, 1.0)
        height = np.maximum(height, 1.0)
    bin_w, bin_h = width / pw, height / ph
    if sampling_ratio > 0:
        grid_h = np.full(len(rois), sampling_ratio, np.int64)
        grid_w = grid_h.copy()
    else:
        # Adaptive: about one sample per feature-map cell, ceil(size / pooled) per axis.
        grid_h = np.maximum(np.ceil(height / ph), 0).astype(np.int64)
        grid_w = np.maximum(np.ceil(width / pw), 0).astype(np.int64)
    return rois[:, 0].astype(np.int64), start_x, start_y, bin_w, bin_h, grid_h, grid_w


def roi_align_sampling_points(
    rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False
):
    """The (x, y) of every RoIAlign sample point on the feature map (before any clamping).

    rois: (K, 5) [batch_index, x1, y1, x2, y2], input-image pixels.
    Returns a list of K float64 arrays (ph, pw, gh, gw, 2); gh, gw may differ per RoI
    when ``sampling_ratio <= 0`` (adaptive). These are the points ``roi_align`` reads,
    in cell-index units: a point at (j, i) reads cell (i, j) alone, so the pixel frame
    (docs/architecture.md, Frames and pixels) is these coordinates + 0.5.
    """
    rois = check_rois(rois, np.inf)
    output_size = check_output_size(output_size)
    geometry = roi_align_geometry(
        rois, output_size, check_scale(spatial_scale), sampling_ratio, aligned
    )
    return _points(geometry, output_size)


def _points(geometry, output_size):
    """roi_align_geometry's arrays -> one (ph, pw, gh, gw, 2) array of points per RoI."""
    return [_sample_points(*g[1:], output_size) for g in zip(*geometry, strict=True)]


def _sample_points(start_x, start_y, bin_w, bin_h, grid_h, grid_w, output_size):
    ph, pw = output_size
    # Sample centres of a gh x gw grid inside each bin: (i + 0.5) / g of the bin.
    y = start_y + np.arange(ph)[:, None] * bin_h + (np.arange(grid_h) + 0.5) * bin_h / grid_h
    x = start_x + np.arange(pw)[:, None] * bin_w + (np.arange(grid_w) + 0.5) * bin_w / grid_w
    points = np.empty((ph, pw, grid_h, grid_w, 2))
    points[..., 0] = x[None, :, None, :]
    points[..., 1] = y[:, None, :, None]
    return points


def bilinear_neighbours(points, height, width):
    """The four feature cells each point reads and their bilinear weights.

    points: (..., 2) float64 (x, y), cell-index units, as from roi_align_sampling_points.
    Returns ``index`` (..., 4) int64 flat cell indices y * width + x and ``weight``
    (..., 4) float64, ordered (top-left, top-right, bottom-left, bottom-right).
    A point more than one cell outside the map reads nothing (weights 0); one on the
    border strip reads the edge cells (torchvision's rules, docs/architecture.md, RoI operators).
    """
    x, y = points[..., 0], points[..., 1]
    inside = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y, x = np.maximum(y, 0.0), np.maximum(x, 0.0)
    y_low, x_low = y.astype(np.int64), x.astype(np.int64)
    y_edge, x_edge = y_low >= height - 1, x_low >= width - 1
    y_low = np.where(y_edge, height - 1, y_low)
    x_low = np.where(x_edge, width - 1, x_low)
    y_high = np.where(y_edge, height - 1, y_low + 1)
    x_high = np.where(x_edge, width - 1, x_low + 1)
    ly = np.where(y_edge, 0.0, y - y_low)
    lx = np.where(x_edge, 0.0, x - x_low)
    hy, hx = 1.0 - ly, 1.0 - lx
    weight = np.stack([hy * hx, hy * lx, ly * hx, ly * lx], axis=-1) * inside[..., None]
    index = np.stack(
        [
            y_low * width + x_low,
            y_low * width + x_high,
            y_high * width + x_low,
            y_high * width + x_high,
        ],
        axis=-1,
    )
    return np.where(inside[..., None], index, 0), weight


def roi_align(
    features,
    rois,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    reduction="avg",
):
    """RoIAlign: bilinear samples averaged (or maxed) over each of ph x pw bins.

    features: (N, C, H, W) float32 or float64 feature maps (other dtypes become float32).
    rois: (K, 5) [batch_index, x1, y1, x2, y2], input-image pixels.
    output_size: int or (ph, pw).
    spatial_scale: feature-map pixels per input pixel (1 / stride).
    sampling_ratio: samples per bin per axis; <= 0 picks ceil(roi size / output size).
    aligned: half-pixel correction (torchvision ``aligned=True``); False is legacy.
    reduction: "avg" (the paper, torchvision) or "max" (max of the samples of a bin).
    Returns (K, C, ph, pw) in the features' dtype.
    """
    features = check_features(features)
    n, c, h, w = features.shape
    rois = check_rois(rois, n)
    output_size = check_output_size(output_size)
    spatial_scale = check_scale(spatial_scale)
    if reduction not in ("avg", "max"):
        raise ValueError(f"reduction must be 'avg' or 'max'; got {reduction!r}")
    geometry = roi_align_geometry(
        rois, output_size, spatial_scale, int(sampling_ratio), bool(aligned)
    )
    fast = kernels.implementation("roi_align")
    if fast is not None:
        return fast(features, geometry, output_size, reduction)
    out = np.zeros((len(rois), c, *output_size), features.dtype)
    if h == 0 or w == 0:
        return out
    for k, (batch, roi_points) in enumerate(
        zip(geometry[0], _points(geometry, output_size), strict=True)
    ):
        if roi_points[0, 0].size == 0:
            continue  # an empty RoI under adaptive sampling has no samples: output 0
        index, weight = bilinear_neighbours(roi_points, h, w)
        # (C, ph, pw, gh, gw): the bilinear value of every sample in every channel.
        samples = (features[batch].reshape(c, h * w)[:, index] * weight).sum(-1)
        if reduction == "avg":
            out[k] = samples.mean(axis=(-2, -1))
        else:
            out[k] = samples.max(axis=(-2, -1))
    return out


def roi_align_backward(
    grad_out, rois, features_shape, spatial_scale=1.0, sampling_ratio=-1, aligned=False
):
    """Gradient of ``roi_align(..., reduction="avg")`` with respect to the features.

    grad_out: (K, C, ph, pw) float32/float64, dLoss/d(output).
    rois: (K, 5), the same RoIs as the forward; features_shape: (N, C, H, W).
    Returns grad_features (N, C, H, W) in grad_out's dtype: each output's gradient
    spread over the four neighbours of each sample, times weight / samples per bin.
    """
    grad_out, rois, (n, c, h, w) = check_backward(grad_out, rois, features_shape)
    output_size = check_output_size(grad_out.shape[2:])
    spatial_scale = check_scale(spatial_scale)
    geometry = roi_align_geometry(
        rois, output_size, spatial_scale, int(sampling_ratio), bool(aligned)
    )
    fast = kernels.implementation("roi_align_backward")
    if fast is not None:
        return fast(grad_out, geometry, (n, c, h, w))
    grad = np.zeros((n, c, h * w), grad_out.dtype)
    if h == 0 or w == 0 or c == 0:
        return grad.reshape(n, c, h, w)
    for k, (batch, roi_points) in enumerate(
        zip(geometry[0], _points(geometry, output_size), strict=True)
    ):
        index, weight = bilinear_neighbours(roi_points, h, w)
        count = max(index.shape[2] * index.shape[3], 1)
        # (C, ph, pw, gh, gw, 4): what each sample sends to each of its four cells.
        share = grad_out[k][:, :, :, None, None, None] * (weight / count)
        np.add.at(grad[batch], (slice(None), index.reshape(-1)), share.reshape(c, -1))
    return grad.reshape(n, c, h, w)
