"""A multiplication the CUDA compiler may not fuse with an add (docs/architecture.md,
Backends and dispatch).

numba-cuda compiles with NVVM's default ``-fma=1`` (``cuda.jit`` passes ``-fma`` only
with ``fastmath=True``, and then turns it on together with flush-to-zero and approximate
division), and no ``cuda.jit`` option turns contraction off. So ``a * b + c`` becomes one
fused multiply-add, rounded once where the NumPy reference rounds the product and then
the sum: a kernel that compares such a result with a threshold (an IoU with NMS's, a
sample coordinate with a cell border) could decide otherwise than the reference.
libdevice's ``__nv_fmul_rn`` / ``__nv_dmul_rn`` emit ``mul.rn``, a product with an
explicit rounding mode, which neither NVVM nor ptxas fuses into an FMA (the contract of
CUDA's ``__fmul_rn``). The simulator has neither libdevice nor FMA: there a product is
NumPy's, rounded on its own.
"""

from __future__ import annotations

import numpy as np
from numba import cuda


def _times(a, b):
    return a * b


def rounded_product(dtype):
    """The device function ``mul(a, b)``: ``a * b`` in ``dtype`` (float32 or float64),
    rounded on its own and never fused with an add."""
    if cuda.config.ENABLE_CUDASIM:
        return cuda.jit(device=True)(_times)
    from numba.cuda import libdevice

    return libdevice.fmul_rn if np.dtype(dtype) == np.float32 else libdevice.dmul_rn
