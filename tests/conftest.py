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


GPU_RUN = "gpu" in _marker_expression(sys.argv) and "not gpu" not in _marker_expression(sys.argv)
if not GPU_RUN:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    # The simulator runs each CUDA thread as a Python thread while the launching thread
    # busy-polls them. With the default 5 ms GIL switch interval every hand-over can
    # cost 5 ms, and a launch of a few thousand threads then takes minutes on a 2-core
    # machine; a short interval hands the GIL over promptly.
    sys.setswitchinterval(1e-6)

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

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
