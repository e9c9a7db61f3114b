"""RoI feature extraction: RoIPool (Fast R-CNN §2.1) and RoIAlign (Mask R-CNN §3).

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

from __future__ import annotations

import numpy as np

from . import kernels, nn

# --- argument checks shared by every op -------------------------------------------


def _check_features(features, name="features"):
    """The (N, C, H, W) map as float32/float64 (other dtypes become float32)."""
    if kernels.is_device_array(features):
        if kernels.get_backend() != "cuda":
            raise ValueError(
                f"{name} is a GPU array; run under use_backend('cuda') or pass a NumPy array"
            )
        if len(features.shape) != 4:
            raise ValueError(f"{name} must be 4-D (N, C, H, W); got shape {tuple(features.shape)}")
        return features
    features = np.asarray(features)
    if features.ndim != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W); got shape {features.shape}")
    if features.dtype not in (np.float32, np.float64):
        features = features.astype(np.float32)
    return features


def _check_rois(rois, num_images, dtype=np.float64):
    """(K, 5) rois as a host ``dtype`` array; the batch index must be an integer in
    [0, num_images). RoIs on the GPU are copied to the host: the geometry every backend
    samples from is computed there."""
    rois = np.asarray(kernels.to_host(rois))
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"rois must be (K, 5) [batch_index, x1, y1, x2, y2]; got shape {rois.shape}"
        )
    if not np.issubdtype(rois.dtype, np.number):
        raise ValueError(f"rois must be numeric; got dtype {rois.dtype}")
    rois = rois.astype(dtype, copy=False)
    if not np.isfinite(rois).all():
        bad = int(np.flatnonzero(~np.isfinite(rois).all(axis=1))[0])
        raise ValueError(f"rois must be finite; row {bad} is {rois[bad].tolist()}")
    batch = rois[:, 0]
    if np.any(batch != np.round(batch)) or np.any(batch < 0) or np.any(batch >= num_images):
        raise ValueError(
            f"rois[:, 0] must be integer batch indices in [0, {num_images}); "
            f"got {np.unique(batch)[:10].tolist()}"
        )
    return rois


def _check_output_size(output_size):
    """``output_size`` (int or (ph, pw)) as a tuple of two ints >= 1."""
    size = (output_size, output_size) if np.isscalar(output_size) else tuple(output_size)
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"output_size must be an int >= 1 or (ph, pw) of such; got {output_size}")
    return int(size[0]), int(size[1])


def _check_scale(spatial_scale):
    scale = float(spatial_scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"spatial_scale must be a positive number; got {spatial_scale}")
    return scale


def _check_backward(grad_out, rois, features_shape):
    """A backward's arguments: grad_out (K, C, ph, pw), rois (K, 5), features_shape (N, C, H, W).

    Returns grad_out and rois as ``_check_features`` and ``_check_rois`` give them, and
    features_shape as a tuple of four ints.
    """
    grad_out = _check_features(grad_out, "grad_out")
    if len(features_shape) != 4:
        raise ValueError(f"features_shape must be (N, C, H, W); got {tuple(features_shape)}")
    n, c, h, w = (int(s) for s in features_shape)
    rois = _check_rois(rois, n)
    if tuple(grad_out.shape[:2]) != (len(rois), c):
        raise ValueError(
            f"grad_out must be (K, C, ph, pw) = ({len(rois)}, {c}, ph, pw); "
            f"got shape {tuple(grad_out.shape)}"
        )
    return grad_out, rois, (n, c, h, w)


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
    rois = _check_rois(rois, np.inf)
    output_size = _check_output_size(output_size)
    geometry = roi_align_geometry(
        rois, output_size, _check_scale(spatial_scale), sampling_ratio, aligned
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
    features = _check_features(features)
    n, c, h, w = features.shape
    rois = _check_rois(rois, n)
    output_size = _check_output_size(output_size)
    spatial_scale = _check_scale(spatial_scale)
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
    grad_out, rois, (n, c, h, w) = _check_backward(grad_out, rois, features_shape)
    output_size = _check_output_size(grad_out.shape[2:])
    spatial_scale = _check_scale(spatial_scale)
    geometry = roi_align_geometry(
        rois, output_size, spatial_scale, int(sampling_ratio), bool(aligned)
    )
    fast = kernels.implementation("roi_align_backward")
    if fast is not None:
        return fast(grad_out, geometry, (n, c, h, w))
    grad = np.zeros((n, c, h * w), grad_out.dtype)
    if h == 0 or w == 0:
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
    features = _check_features(features)
    n, c, h, w = features.shape
    rois = _check_rois(rois, n)
    output_size = _check_output_size(output_size)
    spatial_scale = _check_scale(spatial_scale)
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
    grad_out, rois, (n, c, h, w) = _check_backward(grad_out, rois, features_shape)
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
    features = _check_features(features)
    n, c, h, w = features.shape
    rois = _check_rois(rois, n)
    crop_size = _check_output_size(crop_size)
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


# --- MultiScaleRoI: each box from its pyramid level (FPN §4.2) ----------------------

ROI_OPS = ("align", "pool", "crop_and_resize")


class MultiScaleRoI(nn.Module):
    """An RoI operator on the pyramid level that suits each box's size (FPN paper, eq. 1).

    op: "align" (RoIAlign, aligned=False as torchvision's MultiScaleRoIAlign), "pool"
    (RoIPool, Fast R-CNN's quantised max) or "crop_and_resize" (TensorFlow's; inference
    only: it has no backward). The last two are the RoI-operator ablation (Table 2c).

    A box of side sqrt(w h) = canonical_scale (224, ImageNet's size) goes to
    ``canonical_level`` (4, P4); each halving of its side moves it one level finer:
    ``k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)``,
    clamped to the levels given. Each level's scale is inferred as
    ``2 ** round(log2(feature_size / image_size))`` from the largest image of the batch,
    as torchvision does. Like every nn layer, a training forward keeps what its
    ``backward`` needs on the saved-tensor stack.
    """

    def __init__(
        self, output_size, op="align", sampling_ratio=2, canonical_scale=224, canonical_level=4
    ):
        super().__init__()
        if op not in ROI_OPS:
            raise ValueError(f"op must be one of {', '.join(ROI_OPS)}; got {op!r}")
        self.op = op
        self.output_size = _check_output_size(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.scales = None  # per level, set up from the last call's shapes

    def extra_repr(self) -> str:
        return (
            f"op={self.op!r}, output_size={self.output_size}, sampling_ratio={self.sampling_ratio}"
        )

    def setup_scales(self, feature_shapes, image_sizes):
        """Infer each level's spatial scale and the level range from the shapes.

        feature_shapes: list of L (N, C, H_l, W_l) finest first; image_sizes: list of (h, w).
        """
        # torchvision infers the scale from the height of the largest image alone, in
        # float32; round is half-to-even there as in NumPy.
        max_h = max(int(s[0]) for s in image_sizes)
        self.scales = [
            float(2.0 ** np.round(np.log2(np.float32(shape[-2] / max_h))))
            for shape in feature_shapes
        ]
        self.k_min = int(-np.log2(np.float32(self.scales[0])))
        self.k_max = int(-np.log2(np.float32(self.scales[-1])))

    def levels(self, boxes):
        """Index into the pyramid (0 = finest map given, pyramid level k_min + index).

        boxes: (K, 4) or a list per image of (K_i, 4) x1, y1, x2, y2, input-image
        pixels. Needs the scales of a previous call or of ``setup_scales``.
        Returns (K,) int64 (a degenerate box goes to the finest level).
        """
        if self.scales is None:
            raise ValueError(
                "MultiScaleRoI.levels needs the pyramid's scales: call the layer "
                "or setup_scales(feature_shapes, image_sizes) first"
            )
        if isinstance(boxes, list | tuple):
            boxes = np.concatenate([np.asarray(b).reshape(-1, 4) for b in boxes])
        boxes = np.asarray(boxes)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (K, 4) x1, y1, x2, y2; got shape {boxes.shape}")
        dtype = boxes.dtype.type if boxes.dtype in (np.float32, np.float64) else np.float32
        boxes = boxes.astype(dtype)
        side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.floor(
                dtype(self.canonical_level)
                + np.log2(side / dtype(self.canonical_scale))
                + dtype(1e-6)
            )
        k = np.nan_to_num(k, nan=self.k_min, neginf=self.k_min)
        return (np.clip(k, self.k_min, self.k_max) - self.k_min).astype(np.int64)

    def forward(self, features, boxes, image_sizes):
        """Pool every box from its level.

        features: list of L (N, C, H_l, W_l) float32/float64 maps, finest first.
        boxes: list of N arrays (K_i, 4) x1, y1, x2, y2, input-image pixels.
        image_sizes: list of N (h, w), the (resized) input images.
        Returns (sum K_i, C, ph, pw), boxes in image order.
        """
        features, rois = self._check(features, boxes, image_sizes)
        self.setup_scales([f.shape for f in features], image_sizes)
        level = self.levels(rois[:, 1:])
        out = np.zeros((len(rois), features[0].shape[1], *self.output_size), features[0].dtype)
        argmaxes = {}
        for l, (f, scale) in enumerate(zip(features, self.scales, strict=True)):
            chosen = np.flatnonzero(level == l)
            if not chosen.size:
                continue
            if self.op == "align":
                out[chosen] = roi_align(
                    f, rois[chosen], self.output_size, scale, self.sampling_ratio, aligned=False
                )
            elif self.op == "pool":
                out[chosen], argmaxes[l] = roi_pool(f, rois[chosen], self.output_size, scale)
            else:
                out[chosen] = crop_and_resize(
                    f, _normalised(rois[chosen], scale, f.shape), self.output_size
                )
        self._save(rois, level, [tuple(f.shape) for f in features], list(self.scales), argmaxes)
        return out

    def backward(self, grad_out):
        """grad_out (sum K_i, C, ph, pw) -> list of L grad_features, one per level."""
        if self.op == "crop_and_resize":
            raise NotImplementedError(
                "roi_op='crop_and_resize' is for inference comparisons (Table 2c); "
                "train with 'align' or 'pool'"
            )
        rois, level, shapes, scales, argmaxes = self._pop()
        grads = []
        for l, (shape, scale) in enumerate(zip(shapes, scales, strict=True)):
            chosen = np.flatnonzero(level == l)
            if not chosen.size:
                grads.append(np.zeros(shape, grad_out.dtype))
            elif self.op == "align":
                grads.append(
                    roi_align_backward(
                        grad_out[chosen], rois[chosen], shape, scale, self.sampling_ratio
                    )
                )
            else:
                grads.append(roi_pool_backward(grad_out[chosen], argmaxes[l], rois[chosen], shape))
        return grads

    def _check(self, features, boxes, image_sizes):
        """Checked features and the (K, 5) RoIs of all images, in the features' dtype."""
        if not isinstance(features, list | tuple) or len(features) == 0:
            raise ValueError("features must be a non-empty list of (N, C, H_l, W_l) maps")
        features = [_check_features(f, f"features[{i}]") for i, f in enumerate(features)]
        n, dtype = features[0].shape[0], features[0].dtype
        if len(boxes) != n or len(image_sizes) != n:
            raise ValueError(
                f"boxes and image_sizes must have one entry per image ({n}); "
                f"got {len(boxes)} and {len(image_sizes)}"
            )
        rois = [np.zeros((0, 5), dtype)]
        for i, b in enumerate(boxes):
            b = np.asarray(b, dtype)
            b = b.reshape(0, 4) if b.size == 0 else b
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes[{i}] must be (K_i, 4) x1, y1, x2, y2; got {b.shape}")
            rois.append(np.concatenate([np.full((len(b), 1), i, dtype), b], axis=1))
        return features, np.concatenate(rois)


def _normalised(rois, scale, shape):
    """(K, 5) image-pixel RoIs -> crop_and_resize's normalised corners on one level.

    Feature-map coordinates with cell centres at integers (like aligned=False),
    normalised so that 0 and 1 are the first and last cells' centres.
    """
    h, w = shape[2:]
    norm = rois.copy()
    norm[:, [1, 3]] *= scale / max(w - 1, 1)
    norm[:, [2, 4]] *= scale / max(h - 1, 1)
    return norm


class MultiScaleRoIAlign(MultiScaleRoI):
    """``MultiScaleRoI(op="align")``, under torchvision's name."""

    def __init__(self, output_size, sampling_ratio=2, canonical_scale=224, canonical_level=4):
        super().__init__(output_size, "align", sampling_ratio, canonical_scale, canonical_level)
