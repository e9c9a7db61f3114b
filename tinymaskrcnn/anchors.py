"""Anchors: the reference boxes the RPN scores and refines (Faster R-CNN §3.1.1, FPN §4.1).

Every location of every pyramid level carries A anchors, one per (aspect ratio, size)
pair of that level. With FPN each level has one size (32 on P2 ... 512 on P6) and three
ratios, so A = 3 and an 800 x 1216 image has about 242k anchors.

Shapes used below:
    L: pyramid levels              A: anchors per location (ratios x sizes of a level)
    Hl, Wl: feature-map size of level l
    The anchors of level l are (Hl * Wl * A, 4) x1, y1, x2, y2 in image pixels.

Order (docs/architecture.md, Anchors): level by level, then location-major (row by row,
then column), then
the A anchors of one cell with the aspect ratio as the outer loop. The RPN head's outputs
are flattened the same way, so anchor i, objectness i and deltas i belong together.
"""

from __future__ import annotations

import numpy as np


def cell_anchors(sizes, aspect_ratios):
    """The A anchors of one feature-map cell, centred on (0, 0).

    sizes: the sizes s of one level (the square root of the anchor area).
    aspect_ratios: the ratios r = h / w of one level.
    Returns (A, 4) float32, A = len(aspect_ratios) * len(sizes), ratios outer.

    ``h = s sqrt(r)``, ``w = s / sqrt(r)``, and the corners ``[-w, -h, w, h] / 2`` are
    rounded to integers half-to-even, in float32 as torchvision does. So size 128 at
    ratio 0.5 is ``[-91, -45, 91, 45]``: 182 x 90, not the 181 x 91 one gets by rounding
    the width and height (181.02 x 90.51) instead of the half-extents (90.51 -> 91, 45.25 -> 45).
    """
    scales = np.asarray(sizes, dtype=np.float32)
    ratios = np.asarray(aspect_ratios, dtype=np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).ravel()
    hs = (h_ratios[:, None] * scales[None, :]).ravel()
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)


class AnchorGenerator:
    """Anchors for every level of a feature pyramid.

    sizes: one tuple of sizes per level, e.g. ((32,), (64,), (128,), (256,), (512,)).
    aspect_ratios: one tuple of ratios (h / w) per level, e.g. ((0.5, 1.0, 2.0),) * 5.
    Defaults are torchvision's Mask R-CNN FPN anchors (P2..P6).
    """

    def __init__(
        self,
        sizes=((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios=((0.5, 1.0, 2.0),) * 5,
    ):
        sizes = tuple(tuple(s) if np.iterable(s) else (s,) for s in sizes)
        aspect_ratios = tuple(tuple(r) if np.iterable(r) else (r,) for r in aspect_ratios)
        if len(sizes) != len(aspect_ratios) or not sizes:
            raise ValueError(
                "sizes and aspect_ratios must give one tuple per pyramid level; "
                f"got {len(sizes)} and {len(aspect_ratios)} levels"
            )
        for name, levels in (("sizes", sizes), ("aspect_ratios", aspect_ratios)):
            for level in levels:
                values = np.asarray(level, dtype=np.float64)
                if values.size == 0 or not (np.isfinite(values).all() and (values > 0).all()):
                    raise ValueError(f"{name} must be positive numbers per level; got {level}")
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self.cell_anchors = [cell_anchors(s, r) for s, r in zip(sizes, aspect_ratios, strict=True)]

    def __repr__(self) -> str:
        return f"AnchorGenerator(sizes={self.sizes}, aspect_ratios={self.aspect_ratios})"

    def num_anchors_per_location(self):
        """A for each level: the number of outputs per location the RPN head needs."""
        return [len(c) for c in self.cell_anchors]

    def strides(self, image_size, feature_sizes):
        """(stride_h, stride_w) per level: ``image_size // feature_size`` on each axis.

        Integer division, as torchvision: a 333-pixel side with a 42-cell map has stride 7,
        not 7.93, so the anchors do not quite reach the far edge of an odd-sized image.
        """
        image_h, image_w = _check_size(image_size, "image_size")
        feature_sizes = list(feature_sizes)
        if len(feature_sizes) != len(self.cell_anchors):
            raise ValueError(
                f"feature_sizes must give one (height, width) per level "
                f"({len(self.cell_anchors)}); got {len(feature_sizes)}"
            )
        strides = []
        for level, size in enumerate(feature_sizes):
            h, w = _check_size(size, f"feature_sizes[{level}]")
            if h > image_h or w > image_w:
                raise ValueError(
                    f"feature_sizes[{level}] = {(h, w)} is larger than image_size "
                    f"{(image_h, image_w)}; a feature map is at most as large as the image"
                )
            strides.append((image_h // h, image_w // w))
        return strides

    def generate(self, image_size, feature_sizes):
        """All anchors of one image.

        image_size: (height, width) of the (padded) input image in pixels.
        feature_sizes: [(Hl, Wl), ...] one per level, finest first.
        Returns a list per level of (Hl * Wl * A, 4) float32 x1 y1 x2 y2, image pixels,
        in the order of the module docstring. Anchors sit on cell corners
        (``shift + cell anchor``), not on cell centres, as in torchvision.
        """
        feature_sizes = list(feature_sizes)
        anchors = []
        for (stride_h, stride_w), size, base in zip(
            self.strides(image_size, feature_sizes), feature_sizes, self.cell_anchors, strict=True
        ):
            h, w = (int(v) for v in size)
            shift_x = np.arange(w, dtype=np.float32) * stride_w
            shift_y = np.arange(h, dtype=np.float32) * stride_h
            sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
            anchors.append((shifts + base[None, :, :]).reshape(-1, 4))
        return anchors

    def __call__(self, image_size, feature_sizes):
        """``generate`` with the levels concatenated: (sum of Hl * Wl * A, 4) float32."""
        return np.concatenate(self.generate(image_size, feature_sizes), axis=0)


def _check_size(size, name):
    try:
        h, w = size
        h_int, w_int = int(h), int(w)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be (height, width) positive integers; got {size!r}"
        ) from None
    if h_int != h or w_int != w or h_int <= 0 or w_int <= 0:
        raise ValueError(f"{name} must be (height, width) positive integers; got {size!r}")
    return h_int, w_int


__all__ = ["AnchorGenerator", "cell_anchors"]
