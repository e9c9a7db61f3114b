"""Image files in, the model's image format out."""

from __future__ import annotations

import os

import numpy as np


def read_image(path) -> np.ndarray:
    """(3, H, W) float32 RGB in [0, 1] from an image file (anything Pillow reads).

    Raises FileNotFoundError for a missing file and ValueError, naming it, for one that
    does not decode.
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path!r} does not exist")
    try:
        with Image.open(path) as pil:
            pil.load()
            rgb = np.asarray(pil.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"image {path!r} does not decode as an image: {err}") from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), np.float32) / np.float32(255)
