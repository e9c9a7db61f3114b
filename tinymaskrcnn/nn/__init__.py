"""The small layer library: modules with explicit forward and backward (no autograd).

Everything a Mask R-CNN needs, named as torch names it: ``Module``, ``Parameter``,
``Sequential``, ``ModuleList``, ``Conv2d``, ``ConvTranspose2d``, ``Linear``, ``ReLU``,
``MaxPool2d``, ``FrozenBatchNorm2d``, ``BatchNorm2d``, ``SGD``; the functional forms
with their backwards (``conv2d``, ``max_pool2d``, ``upsample_nearest``, ...); the one
stable ``sigmoid`` and ``softmax``; and
``init`` for weight initialisation. How forward keeps what backward needs:
see ``module.py``.
"""

from . import init
from .conv import Conv2d, conv2d, conv2d_backward
from .conv_transpose import ConvTranspose2d, conv_transpose2d, conv_transpose2d_backward
from .layers import (
    BatchNorm2d,
    FrozenBatchNorm2d,
    Linear,
    MaxPool2d,
    ReLU,
    bias_add_relu_,
    log_softmax,
    max_pool2d,
    max_pool2d_backward,
    resize_bilinear,
    sigmoid,
    softmax,
    upsample_nearest,
    upsample_nearest_backward,
)
from .module import Module, ModuleList, Parameter, Sequential, grad_enabled, no_grad
from .optim import SGD

__all__ = [
    "SGD",
    "BatchNorm2d",
    "Conv2d",
    "ConvTranspose2d",
    "FrozenBatchNorm2d",
    "Linear",
    "MaxPool2d",
    "Module",
    "ModuleList",
    "Parameter",
    "ReLU",
    "Sequential",
    "bias_add_relu_",
    "conv2d",
    "conv2d_backward",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "grad_enabled",
    "init",
    "log_softmax",
    "max_pool2d",
    "max_pool2d_backward",
    "no_grad",
    "resize_bilinear",
    "sigmoid",
    "softmax",
    "upsample_nearest",
    "upsample_nearest_backward",
]
