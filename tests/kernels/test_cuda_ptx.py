"""Every CUDA kernel of the convolution, layer and RoI modules compiles for a real GPU.

The simulator runs kernels as Python, so a kernel can pass every simulated test and
still fail to type on a GPU (a float literal typed float64 where a float32 is stored,
an integer op on a float, a tuple the compiler cannot unpack). This compiles each
kernel to PTX with Numba's CUDA compiler (tests/real_compiler.py: NVVM, no GPU) for
both dtypes, with the argument types its host wrapper launches it with: the types of
small NumPy arrays laid out as the wrapper's device arrays are (C-contiguous), Python
ints and bools, and the dtype's scalars. The box kernels have their own such test
(test_box_kernels.py).
"""

import pytest
from real_compiler import run_outside_the_simulator

pytestmark = pytest.mark.cuda

_SCRIPT = """
import numpy as np
from numba import cuda, typeof
from numba.cuda import dispatcher
from tinymaskrcnn.kernels import cuda_conv as cc, cuda_layers as cl, cuda_roi_ops as cr

# numba-cuda (0.30) compiles a device function a kernel calls for the current device's
# compute capability, which needs a GPU; compile_ptx itself takes cc. Without a GPU the
# device functions get the same cc as the kernels.
class NoDevice:
    compute_capability = (8, 0)

dispatcher.get_current_device = NoDevice

def arr(ndim, dtype):
    return np.zeros((2,) * ndim, dtype)

for dtype in (np.float32, np.float64):
    f = lambda ndim: arr(ndim, dtype)
    i64 = lambda ndim: arr(ndim, np.int64)
    zero = dtype(0)
    geometry = (i64(1), arr(1, np.float64), arr(1, np.float64), arr(1, np.float64),
                arr(1, np.float64), i64(1), i64(1))
    launches = {
        "matmul": (cc._MATMUL[np.dtype(dtype)], (f(3), f(3), f(3), True, False, True, zero)),
        "im2col": (cc._im2col, (f(4), 0, 3, 3, 1, 1, 1, 1, 1, 1, 2, zero, f(2))),
        "col2im": (cc._col2im, (f(2), 0, 3, 3, 1, 1, 1, 1, 1, 1, 2, 2, zero, f(4))),
        "add_bias": (cc._add_bias, (f(3), f(1))),
        "bias_add_relu": (
            cl._BIAS_ADD_RELU[np.dtype(dtype)], (f(2), f(1), True, f(1), f(2), True, True, zero)
        ),
        "relu": (cl._relu, (f(1), f(1), zero)),
        "max_pool": (cl._max_pool, (f(4), 3, 3, 2, 2, 1, 1, True, dtype(-np.inf), f(4), i64(4))),
        "add_upsampled": (cl._add_upsampled, (f(4), f(4), np.float32(0.5), np.float32(0.5))),
        "roi_align_forward": (cr._roi_align_forward, (f(4), *geometry, False, f(4))),
        "roi_align_backward": (cr._roi_align_backward, (f(4), *geometry, f(4))),
        "roi_pool_forward": (cr._roi_pool_forward, (f(4), i64(1), *(i64(2),) * 4, f(4), i64(4))),
        "roi_pool_backward": (cr._roi_pool_backward, (f(4), i64(4), i64(1), f(4))),
        "place_rows": (cr._place_rows, (f(2), i64(1), f(2))),
    }
    for name, (kernel, args) in launches.items():
        cuda.compile_ptx(kernel.py_func, tuple(typeof(a) for a in args), cc=(8, 0))
        print(np.dtype(dtype).name, name)
"""


def test_every_conv_layer_and_roi_kernel_compiles_to_ptx_for_a_real_gpu():
    compiled = run_outside_the_simulator(_SCRIPT).split()
    assert len(compiled) == 2 * 2 * 13, compiled  # (dtype, name) for 13 kernels, 2 dtypes
