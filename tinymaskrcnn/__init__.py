"""tinymaskrcnn: Mask R-CNN from scratch in readable NumPy, with Numba kernels for speed.

The stages, in the order the data flows through them
(docs/architecture.md, Stage map and data flow):
transform -> backbone -> fpn -> anchors / rpn -> roi_ops -> roi_heads -> masks -> losses.
"""

from .config import MaskRCNNConfig
from .kernels import available_backends, get_backend, implementations, use_backend
from .model import MaskRCNN

__version__ = "0.1.0"

__all__ = [
    "MaskRCNN",
    "MaskRCNNConfig",
    "__version__",
    "available_backends",
    "get_backend",
    "implementations",
    "use_backend",
]
