"""Every plot the tutorials and the tour draw.

Each function takes plain arrays (documented like the stage modules), draws on a new
figure or on a given ``ax``, and ``save(fig, path)`` writes the PNG. Matplotlib runs
with the non-interactive Agg backend so that tutorials work on machines with no screen.
"""

from __future__ import annotations

import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402,F401


def save(fig, path) -> str:
    """Write ``fig`` to ``path`` (PNG) atomically: a temporary file, then a rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=directory)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        plt.close(fig)
    return path


# --- anchors, IoU matching, box coding (tutorials 01-03) ---------------------------


# --- RoIPool vs RoIAlign (tutorial 04) ---------------------------------------------


# --- backbone and FPN (tutorial 05) ------------------------------------------------
