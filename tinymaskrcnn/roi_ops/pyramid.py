"""MultiScaleRoI: each box read from the pyramid level that suits its size (FPN §4.2).

Shapes used below: N images, C channels, L levels (P2..P5, finest first), K_i boxes of
image i, ph x pw the output of the RoI operator.
"""

from __future__ import annotations

import numpy as np

from .. import kernels, nn
from .align import roi_align, roi_align_backward
from .checks import check_features, check_output_size
from .crop_and_resize import crop_and_resize
from .pool import roi_pool, roi_pool_backward

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
        self.output_size = check_output_size(output_size)
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
        self.setup_scales([tuple(f.shape) for f in features], image_sizes)
        level = self.levels(rois[:, 1:])
        shape = (len(rois), features[0].shape[1], *self.output_size)
        out = None if self.op == "align" else np.zeros(shape, features[0].dtype)
        argmaxes = {}
        for l, (f, scale) in enumerate(zip(features, self.scales, strict=True)):
            chosen = np.flatnonzero(level == l)
            if not chosen.size:
                continue
            # Features on the GPU (the "cuda" backend's inference) give device results,
            # and RoIAlign's stay there for the heads (which have kernels for them);
            # RoIPool's and crop_and_resize's come over (kernels.to_host).
            if self.op == "align":
                pooled = roi_align(
                    f,
                    _rows(rois, chosen),
                    self.output_size,
                    scale,
                    self.sampling_ratio,
                    aligned=False,
                )
                out = _place_rows(out, chosen, pooled, shape)
            elif self.op == "pool":
                pooled, argmax = roi_pool(f, rois[chosen], self.output_size, scale)
                out[chosen], argmaxes[l] = kernels.to_host(pooled), kernels.to_host(argmax)
            else:
                out[chosen] = crop_and_resize(
                    kernels.to_host(f), _normalised(rois[chosen], scale, f.shape), self.output_size
                )
        self._save(rois, level, [tuple(f.shape) for f in features], list(self.scales), argmaxes)
        return np.zeros(shape, features[0].dtype) if out is None else out  # None: no RoIs

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
                        _rows(grad_out, chosen),
                        _rows(rois, chosen),
                        shape,
                        scale,
                        self.sampling_ratio,
                    )
                )
            else:
                grads.append(roi_pool_backward(grad_out[chosen], argmaxes[l], rois[chosen], shape))
        return grads

    def _check(self, features, boxes, image_sizes):
        """Checked features and the (K, 5) RoIs of all images, in the features' dtype."""
        if not isinstance(features, list | tuple) or len(features) == 0:
            raise ValueError("features must be a non-empty list of (N, C, H_l, W_l) maps")
        features = [check_features(f, f"features[{i}]") for i, f in enumerate(features)]
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


def _rows(array, rows):
    """array[rows], or array itself when ``rows`` (ascending, as from np.flatnonzero) are
    all of its rows: one level holding every RoI (the shapes model's boxes, 40-62 px,
    all read P2) costs no copy of the RoIs or of their gradient (6.4 MB a training step)."""
    return array if len(rows) == len(array) else array[rows]


def _place_rows(out, rows, values, shape):
    """out[rows] = values; out (shape) made on first use (None), where values live.

    The levels' rows partition the RoIs (every RoI has one level), so every row of out
    is written once. Under "cuda" with device values the rows are placed by a kernel
    and out stays on the device. When one level holds every RoI (``_rows``), its values
    are out as they are, wherever they live: no copy.
    """
    if out is None and len(rows) == shape[0]:
        return values
    fast = kernels.implementation("place_rows")
    if fast is not None:
        placed = fast(out, rows, values, shape[0])
        if placed is not None:
            return placed
    if out is None:
        out = np.zeros(shape, values.dtype)
    out[rows] = values
    return out


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
