"""TensorFlow's crop_and_resize (used by matterport's Mask R-CNN), for comparison.

Shapes used below: N images, C channels, H x W the map, K boxes, ch x cw the crop.
"""

from __future__ import annotations

import numpy as np

from .checks import check_features, check_output_size, check_rois

# --- crop_and_resize (TensorFlow / matterport) -------------------------------------


def crop_and_resize_points(boxes, crop_size, height, width):
    """The (x, y) samples of TensorFlow's crop_and_resize, cell-index units.

    boxes: (K, 4) float64 x1, y1, x2, y2 *normalised*: 0 is the first cell's centre,
    1 the last one's (TF's convention: x = x1 * (W - 1)). crop_size: (ch, cw).
    Returns (K, ch, cw, 2) float64 (x, y) in cell-index units (cell centres at integers).
    No bins: the corners of the box are sampled themselves, crop_h points from y1 to y2.
    """
    ch, cw = crop_size

    def axis(lo, hi, n, size):
        if n == 1:  # TF samples the centre of the box when the crop is one cell wide
            return (0.5 * (lo + hi) * (size - 1))[:, None]
        return lo[:, None] * (size - 1) + np.arange(n) * ((hi - lo) * (size - 1) / (n - 1))[:, None]

    x = axis(boxes[:, 0], boxes[:, 2], cw, width)
    y = axis(boxes[:, 1], boxes[:, 3], ch, height)
    points = np.empty((len(boxes), ch, cw, 2))
    points[..., 0] = x[:, None, :]
    points[..., 1] = y[:, :, None]
    return points


def crop_and_resize(features, rois, crop_size, extrapolation_value=0.0):
    """TensorFlow's ``crop_and_resize`` (used by matterport's Mask R-CNN), for comparison.

    features: (N, C, H, W) float32/float64.
    rois: (K, 5) [batch_index, x1, y1, x2, y2] with *normalised* corners (see
    crop_and_resize_points; TF orders them y1, x1, y2, x2, this project x first).
    crop_size: int or (ch, cw). Samples outside [0, H-1] x [0, W-1] give
    ``extrapolation_value``. Returns (K, C, ch, cw) in the features' dtype.
    """
    features = check_features(features)
    n, c, h, w = features.shape
    rois = check_rois(rois, n)
    crop_size = check_output_size(crop_size)
    out = np.full((len(rois), c, *crop_size), extrapolation_value, features.dtype)
    if h == 0 or w == 0:
        return out
    points = crop_and_resize_points(rois[:, 1:], crop_size, h, w)
    x, y = points[..., 0], points[..., 1]
    inside = (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1)
    x, y = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
    top, left = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    bottom, right = np.ceil(y).astype(np.int64), np.ceil(x).astype(np.int64)
    ly, lx = y - top, x - left
    for k, batch in enumerate(rois[:, 0].astype(np.int64)):
        f = features[batch]
        upper = f[:, top[k], left[k]] + (f[:, top[k], right[k]] - f[:, top[k], left[k]]) * lx[k]
        lower = (
            f[:, bottom[k], left[k]]
            + (f[:, bottom[k], right[k]] - f[:, bottom[k], left[k]]) * lx[k]
        )
        value = upper + (lower - upper) * ly[k]
        out[k] = np.where(inside[k], value, extrapolation_value)
    return out
