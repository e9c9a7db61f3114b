"""Hypothesis strategies for boxes, shared by every test that needs random boxes.

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
