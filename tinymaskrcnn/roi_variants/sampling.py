"""One sampler for every row of the table, built on roi_ops' geometry: ``run`` and the
sample points and bins the figures draw.

Shapes used below: N images, C channels, H x W the map, K RoIs, ph x pw output bins,
gh x gw samples per bin.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..roi_ops import (
    bilinear_neighbours,
    roi_align_geometry,
    roi_align_sampling_points,
    roi_pool,
    roi_pool_bins,
)
from .table import rule

# --- argument checks -----------------------------------------------------------------


def check_array(array, arg, ndim, form):
    array = np.asarray(array)
    if array.ndim != ndim or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{arg} must be a numeric {form}; got shape {array.shape}, {array.dtype}")
    if not np.isfinite(array).all():
        where = np.argwhere(~np.isfinite(array))[:3].tolist()
        raise ValueError(f"{arg} must be finite; NaN or inf at index {where} (first ones)")
    return array


def check_inputs(features, rois, output_size, spatial_scale):
    features = check_array(features, "features", 4, "(N, C, H, W) array")
    if features.dtype not in (np.float32, np.float64):
        features = features.astype(np.float32)
    n, _, h, w = features.shape
    if h < 1 or w < 1:
        raise ValueError(f"features must have H, W >= 1; got shape {features.shape}")
    rois = check_array(rois, "rois", 2, "(K, 5) [batch_index, x1, y1, x2, y2] array")
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


def run_many(group, features, rois, output_size, scale, ratio):
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
    features, rois, output_size, scale = check_inputs(features, rois, output_size, spatial_scale)
    out = run_many([v], features, rois, output_size, scale, sampling_ratio)[name]
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
