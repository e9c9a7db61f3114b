"""RoIPool (Fast R-CNN §2.1): the max of each of ph x pw bins rounded to whole cells.

Shapes used below: N images, C channels, H x W the map, K RoIs, ph x pw bins.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .checks import check_backward, check_features, check_output_size, check_rois, check_scale

# --- RoIPool ------------------------------------------------------------------------


def roi_pool_bins(rois, output_size, spatial_scale, height, width, dtype=np.float32):
    """RoIPool's quantised bin borders, both roundings of Fast R-CNN included.

    rois: (K, 5) float64, checked, input-image pixels.
    Returns ``h_start, h_end`` (K, ph) and ``w_start, w_end`` (K, pw), int64 feature
    cells, clamped to [0, H] / [0, W]; bin (i, j) covers rows [h_start[i], h_end[i])
    and columns [w_start[j], w_end[j]). ``dtype`` is the features' dtype, in which
    torchvision divides the RoI into bins.
    """
    ph, pw = output_size
    # First rounding: the RoI to whole cells, C's round (halves away from zero), and
    # the +1 of Fast R-CNN's inclusive end.
    corners = rois[:, 1:] * spatial_scale
    corners = (np.sign(corners) * np.floor(np.abs(corners) + 0.5)).astype(np.int64)
    roi_w = np.maximum(corners[:, 2] - corners[:, 0] + 1, 1)
    roi_h = np.maximum(corners[:, 3] - corners[:, 1] + 1, 1)

    # Second rounding: bin borders to whole cells (floor the start, ceil the end).
    def borders(size, start, pooled, limit):
        bin_size = size.astype(dtype)[:, None] / dtype(pooled)
        i = np.arange(pooled, dtype=dtype)
        lo = np.floor(i * bin_size).astype(np.int64) + start[:, None]
        hi = np.ceil((i + dtype(1)) * bin_size).astype(np.int64) + start[:, None]
        return np.clip(lo, 0, limit), np.clip(hi, 0, limit)

    h_start, h_end = borders(roi_h, corners[:, 1], ph, height)
    w_start, w_end = borders(roi_w, corners[:, 0], pw, width)
    return h_start, h_end, w_start, w_end


def roi_pool(features, rois, output_size, spatial_scale=1.0):
    """RoIPool: the max of each of ph x pw quantised bins (Fast R-CNN).

    features: (N, C, H, W) float32 or float64 (other dtypes become float32).
    rois: (K, 5) [batch_index, x1, y1, x2, y2], input-image pixels.
    Returns ``out`` (K, C, ph, pw) in the features' dtype and ``argmax`` (K, C, ph, pw)
    int64: the flat index y * W + x of the winning cell in the RoI's own image (the
    first one in row-major order on ties), -1 for an empty bin, whose output is 0.
    """
    features = check_features(features)
    n, c, h, w = features.shape
    rois = check_rois(rois, n)
    output_size = check_output_size(output_size)
    spatial_scale = check_scale(spatial_scale)
    batch = rois[:, 0].astype(np.int64)
    h_start, h_end, w_start, w_end = roi_pool_bins(
        rois, output_size, spatial_scale, h, w, np.dtype(features.dtype).type
    )
    fast = kernels.implementation("roi_pool")
    if fast is not None:
        return fast(features, batch, h_start, h_end, w_start, w_end)
    ph, pw = output_size
    out = np.zeros((len(rois), c, ph, pw), features.dtype)
    argmax = np.full((len(rois), c, ph, pw), -1, np.int64)
    if c == 0:  # no channels: nothing to pool (the loop below reshapes per channel)
        return out, argmax
    for k, image in enumerate(batch):
        for i in range(ph):
            for j in range(pw):
                rows = np.arange(h_start[k, i], h_end[k, i])
                cols = np.arange(w_start[k, j], w_end[k, j])
                if rows.size == 0 or cols.size == 0:
                    continue
                window = features[image][:, rows[:, None], cols[None, :]].reshape(c, -1)
                best = window.argmax(axis=1)
                out[k, :, i, j] = window[np.arange(c), best]
                argmax[k, :, i, j] = rows[best // cols.size] * w + cols[best % cols.size]
    return out, argmax


def roi_pool_backward(grad_out, argmax, rois, features_shape):
    """Gradient of ``roi_pool``: each output's gradient goes to the cell that won its max.

    grad_out: (K, C, ph, pw) float32/float64; argmax: (K, C, ph, pw) int64 from roi_pool.
    rois: (K, 5), the forward's RoIs (only their batch index is used).
    features_shape: (N, C, H, W). Returns grad_features (N, C, H, W), grad_out's dtype.
    """
    grad_out, rois, (n, c, h, w) = check_backward(grad_out, rois, features_shape)
    if tuple(argmax.shape) != tuple(grad_out.shape):
        raise ValueError(
            f"argmax must have grad_out's shape {tuple(grad_out.shape)}; got {tuple(argmax.shape)}"
        )
    fast = kernels.implementation("roi_pool_backward")
    if fast is not None:
        return fast(grad_out, argmax, rois[:, 0].astype(np.int64), (n, c, h, w))
    argmax = np.asarray(argmax, np.int64)
    grad = np.zeros((n, c, h * w), grad_out.dtype)
    batch = np.broadcast_to(rois[:, 0].astype(np.int64)[:, None, None, None], argmax.shape)
    channel = np.broadcast_to(np.arange(c)[None, :, None, None], argmax.shape)
    won = argmax >= 0
    np.add.at(grad, (batch[won], channel[won], argmax[won]), grad_out[won])
    return grad.reshape(n, c, h, w)
