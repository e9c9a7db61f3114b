"""Argument checks shared by every RoI operator: what the stage validates once, before
the NumPy reference or a kernel (which takes the checked arrays) runs."""

from __future__ import annotations

import numpy as np

from .. import kernels

# --- argument checks shared by every op -------------------------------------------


def check_features(features, name="features"):
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


def check_rois(rois, num_images, dtype=np.float64):
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


def check_output_size(output_size):
    """``output_size`` (int or (ph, pw)) as a tuple of two ints >= 1."""
    size = (output_size, output_size) if np.isscalar(output_size) else tuple(output_size)
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"output_size must be an int >= 1 or (ph, pw) of such; got {output_size}")
    return int(size[0]), int(size[1])


def check_scale(spatial_scale):
    scale = float(spatial_scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"spatial_scale must be a positive number; got {spatial_scale}")
    return scale


def check_backward(grad_out, rois, features_shape):
    """A backward's arguments: grad_out (K, C, ph, pw), rois (K, 5), features_shape (N, C, H, W).

    Returns grad_out and rois as ``check_features`` and ``check_rois`` give them, and
    features_shape as a tuple of four ints.
    """
    grad_out = check_features(grad_out, "grad_out")
    if len(features_shape) != 4:
        raise ValueError(f"features_shape must be (N, C, H, W); got {tuple(features_shape)}")
    n, c, h, w = (int(s) for s in features_shape)
    rois = check_rois(rois, n)
    if tuple(grad_out.shape[:2]) != (len(rois), c):
        raise ValueError(
            f"grad_out must be (K, C, ph, pw) = ({len(rois)}, {c}, ph, pw); "
            f"got shape {tuple(grad_out.shape)}"
        )
    return grad_out, rois, (n, c, h, w)
