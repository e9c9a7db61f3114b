"""tinymaskrcnn: Mask R-CNN from scratch in readable NumPy, with Numba kernels for speed.

The stages, in the order the data flows through them (design §2):
transform -> backbone -> fpn -> anchors / rpn -> roi_ops -> roi_heads -> masks -> losses.
"""

from .kernels import available_backends, get_backend, implementations, use_backend

__version__ = "0.1.0"

__all__ = ["__version__", "available_backends", "get_backend", "implementations", "use_backend"]
