"""Image files in, the model's image format out.

Whatever Pillow reads becomes (3, H, W) float32 RGB in [0, 1] (docs/errors.md lists
what each kind of file gets):

* grey, palette, bilevel and CMYK images are converted to RGB;
* an alpha channel (RGBA, LA, a palette's transparency) is dropped, as torchvision's
  ``read_image(path, ImageReadMode.RGB)`` drops it;
* 16-bit grey (PNG, TIFF) is scaled by 65535, not clipped at 255 as Pillow's own
  conversion to RGB would; 32-bit float grey must already lie in [0, 1];
* a camera's EXIF orientation is applied, so a photo comes out upright as viewers show
  it (``exif_orientation=False`` keeps the stored pixel order, which COCO annotations
  refer to).
"""

from __future__ import annotations

import os

import numpy as np

# Pillow modes of one integer channel wider than 8 bits (16-bit PNGs open as I;16 or I).
_WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_image(path, exif_orientation: bool = True) -> np.ndarray:
    """(3, H, W) float32 RGB in [0, 1] from an image file (the conversions above).

    Raises FileNotFoundError for a missing file, IsADirectoryError for a folder, and
    ValueError, naming the file, for one that does not decode (truncated, not an
    image) or whose pixel values cannot be brought to [0, 1].
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"image {path!r} is a folder, not an image file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path!r} does not exist")
    try:
        with Image.open(path) as pil:
            pil.load()
            if exif_orientation:
                pil = ImageOps.exif_transpose(pil)
            return _to_rgb(pil, path)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"image {path!r} does not decode as an image: {err}") from None


def _to_rgb(pil, path) -> np.ndarray:
    if pil.mode in _WIDE_INTEGER_MODES or pil.mode == "F":
        grey = np.asarray(pil, dtype=np.float32)
        if pil.mode != "F":
            if grey.min() < 0 or grey.max() > 65535:
                raise ValueError(
                    f"image {path!r} is {pil.mode} with values in [{grey.min():g}, "
                    f"{grey.max():g}]; only 8- and 16-bit integer images are read"
                )
            grey = grey / np.float32(65535)
        elif not (np.isfinite(grey).all() and grey.min() >= 0 and grey.max() <= 1):
            raise ValueError(
                f"image {path!r} is a float image with values outside [0, 1] (or NaN); "
                "scale it to [0, 1] first"
            )
        return np.ascontiguousarray(np.broadcast_to(grey, (3, *grey.shape)), np.float32)
    rgb = np.asarray(pil.convert("RGB"))
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), np.float32) / np.float32(255)
