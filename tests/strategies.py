"""Hypothesis strategies for boxes and RoI problems, and the max-pooling geometries the
numba and CUDA kernel tests both run, shared by the tests that need them.

``boxes()`` draws (N, 4) x1 y1 x2 y2 arrays that mix ordinary boxes with the cases that
break careless code: zero width or height, points, duplicates, boxes sharing an edge,
and boxes far apart. Coordinates are multiples of 1/4 so that hand-checkable ties
(equal IoUs, equal scores) occur often.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

COORD_MAX = 256.0

# (kernel, stride, padding) of max pooling: ResNet's stem (3x3/2 pad 1), the FPN's extra
# level (1x1/2, torchvision's LastLevelMaxPool), and an uneven one.
POOLS = [((3, 3), (2, 2), (1, 1)), ((1, 1), (2, 2), (0, 0)), ((2, 3), (1, 2), (1, 1))]


@st.composite
def boxes(draw, min_n=0, max_n=30, dtype=np.float32, coord_max=COORD_MAX, degenerate=True):
    """(N, 4) boxes with 0 <= x1 <= x2 <= coord_max (same for y), N in [min_n, max_n]."""
    n = draw(st.integers(min_n, max_n))
    quarter = int(coord_max * 4)
    corners = draw(hnp.arrays(np.int64, (n, 2), elements=st.integers(0, quarter)))
    sizes = draw(hnp.arrays(np.int64, (n, 2), elements=st.integers(0 if degenerate else 1, 400)))
    if n and degenerate and draw(st.booleans()):
        # Duplicate some rows: exact ties in IoU and perfect overlaps.
        src = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, n - 1)))
        take = draw(hnp.arrays(np.bool_, (n,)))
        corners[take] = corners[src[take]]
        sizes[take] = sizes[src[take]]
    x1y1 = corners / 4.0
    x2y2 = x1y1 + sizes / 4.0
    return np.concatenate([x1y1, x2y2], axis=1).astype(dtype)


@st.composite
def scored_boxes(draw, min_n=0, max_n=30, dtype=np.float32, num_classes=1):
    """(boxes (N, 4), scores (N,), idxs (N,) int64) with frequent score ties."""
    b = draw(boxes(min_n=min_n, max_n=max_n, dtype=dtype))
    n = len(b)
    scores = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 20))) / 20.0
    idxs = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, num_classes - 1)))
    return b, scores.astype(dtype), idxs


def random_boxes(rng, n, image_size=(800, 1216), min_size=0.0, max_size=300.0, dtype=np.float32):
    """n boxes with uniform corners in the image and sizes in [min_size, max_size]."""
    h, w = image_size
    x1 = rng.uniform(0, w, n)
    y1 = rng.uniform(0, h, n)
    bw = rng.uniform(min_size, max_size, n)
    bh = rng.uniform(min_size, max_size, n)
    return np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(dtype)


@st.composite
def roi_problems(draw, max_k=8, max_c=6, max_size=9):
    """(features, rois, output_size, spatial_scale) with RoIs of every kind."""
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, max_c))
    h, w = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # Integer-valued maps now and then, so that RoIPool meets ties.
    if draw(st.booleans()):
        features = rng.normal(size=(n, c, h, w)).astype(dtype)
    else:
        features = rng.integers(0, 3, size=(n, c, h, w)).astype(dtype)
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    k = draw(st.integers(0, max_k))
    span = np.array([w, h, w, h]) / scale
    corners = rng.uniform(-0.5, 1.5, size=(k, 4)) * span
    boxes = np.concatenate(
        [np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])],
        axis=1,
    )
    if k:
        zero_width = rng.random(k) < 0.2
        boxes[zero_width, 2] = boxes[zero_width, 0]
        boxes = np.where(rng.random((k, 1)) < 0.3, np.round(boxes), boxes)  # on cell borders
    rois = np.concatenate([rng.integers(0, n, size=(k, 1)), boxes], axis=1).astype(dtype)
    output_size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return features, rois, output_size, scale
