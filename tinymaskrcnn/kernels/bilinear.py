"""Bilinear reads with torchvision's border rules, one scalar point at a time.

Plain Python, imported by no stage: ``numba_roi_ops.py`` compiles it for the CPU and
``cuda_roi_ops.py`` as a CUDA device function, so both backends read a feature map the
same way. The NumPy reference's vectorised twin is ``roi_ops.bilinear_neighbours``.
"""


def bilinear(y, x, height, width):
    """The four cells around (x, y) and their weights, torchvision's border rules.

    Returns (y_low, y_high, x_low, x_high, w_tl, w_tr, w_bl, w_br); all zero for a point
    more than one cell outside the map. ``(x, y)`` are in cell-index units (cell centres
    at integers); a point on the outer border strip reads the edge cells.
    """
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0
    if y <= 0.0:
        y = 0.0
    if x <= 0.0:
        x = 0.0
    y_low = int(y)
    x_low = int(x)
    if y_low >= height - 1:
        y_low = height - 1
        y_high = height - 1
        ly = 0.0
    else:
        y_high = y_low + 1
        ly = y - y_low
    if x_low >= width - 1:
        x_low = width - 1
        x_high = width - 1
        lx = 0.0
    else:
        x_high = x_low + 1
        lx = x - x_low
    hy = 1.0 - ly
    hx = 1.0 - lx
    return y_low, y_high, x_low, x_high, hy * hx, hy * lx, ly * hx, ly * lx
