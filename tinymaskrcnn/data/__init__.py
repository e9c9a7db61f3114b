"""Datasets: the synthetic shapes set (data/shapes.py), COCO-format data (data/coco.py),
and the horizontal flip of training (data/batching.py).

Every dataset here is indexable, ``ds[i] -> (image, target)``, with
image (3, H, W) float32 RGB in [0, 1] and target {"boxes": (G, 4) float32 x1y1x2y2
pixels, "labels": (G,) int64, "masks": (G, H, W) uint8} — the model's input format
(docs/architecture.md, Stage map and data flow).
"""

from .batching import flip_horizontal
from .coco import CocoDataset, CocoFormatError, export_coco
from .shapes import ShapesDataset

__all__ = [
    "CocoDataset",
    "CocoFormatError",
    "ShapesDataset",
    "export_coco",
    "flip_horizontal",
]
