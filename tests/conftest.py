"""Test set-up shared by every test module.

CUDA kernels run under Numba's simulator unless the run selects the ``gpu`` marker
(``pytest -m gpu`` on a machine with an NVIDIA GPU). The simulator must be switched on
before numba is first imported, which is why this happens at the top of conftest.
"""

import os
import sys


def _marker_expression(argv):
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("-m") and len(arg) > 2:
            return arg[2:]
    return ""


# pytest-xdist's workers do not get pytest's command line (their sys.argv is execnet's),
# so the choice travels to them in the environment they inherit from this process.
_GPU_ENV = "TINYMASKRCNN_GPU_TESTS"
_MARKERS = _marker_expression(sys.argv)
GPU_RUN = os.environ.get(_GPU_ENV) == "1" or ("gpu" in _MARKERS and "not gpu" not in _MARKERS)
if GPU_RUN:
    os.environ[_GPU_ENV] = "1"
else:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    # The simulator runs each CUDA thread as a Python thread while the launching thread
    # busy-polls them. With the default 5 ms GIL switch interval every hand-over can
    # cost 5 ms, and a launch of a few thousand threads then takes minutes on a 2-core
    # machine; a short interval hands the GIL over promptly.
    sys.setswitchinterval(1e-6)

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402


def _lock_the_simulators_shared_arrays():
    """Make Numba's simulated ``cuda.shared.array`` give every thread of a block one array.

    The simulator (numba-cuda 0.30.4, ``FakeCUDAShared.array``) finds a block's shared
    array in a dict keyed by the calling line and creates it on a miss, with nothing
    between the look-up and the insertion. Two threads of a block that both miss each
    create an array; the one whose insertion is overwritten writes its tile to an array
    no other thread reads, which then reads the uninitialised (``np.empty``) slot
    instead: now and then a few outputs of a tiled kernel are garbage such as 1e17 --
    the conv backward (and its bias gradient) under the simulator failed about one run
    in ten (``tests/kernels/test_conv_kernels.py``). On a GPU shared memory is one
    allocation per block, so the kernels themselves are right. This serialises the
    look-up and creation; the key is the kernel's own line, as the simulator's.
    """
    import threading
    import traceback

    import numpy as np
    from numba.cuda.simulator import kernelapi

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory: no look-up race
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        caller = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[0][:2])
        with lock:
            found = self._allocations.get(caller)
            if found is None:
                found = self._allocations[caller] = np.empty(shape, dtype)
        return found

    kernelapi.FakeCUDAShared.array = array


if not GPU_RUN:
    _lock_the_simulators_shared_arrays()

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    # Small test launches underuse a GPU; Numba says so on every launch.
    config.addinivalue_line("filterwarnings", "ignore::numba.core.errors.NumbaPerformanceWarning")


def pytest_collection_modifyitems(config, items):
    # Under -m gpu the CUDA tests run on the real device: select them with the gpu marker.
    if GPU_RUN:
        for item in items:
            if item.get_closest_marker("cuda") is not None:
                item.add_marker(pytest.mark.gpu)
