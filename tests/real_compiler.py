"""Run a script under Numba's real CUDA compiler, outside the simulator.

The test process runs the CUDA kernels under the simulator (conftest switches it on
before numba loads), and the simulator runs kernels as Python: it forgives typing
errors that Numba's CUDA compiler rejects and never shows what NVVM makes of the code.
Compiling to PTX needs NVVM but no GPU, in another process without
``NUMBA_ENABLE_CUDASIM``. Where NVVM is missing the test is skipped, with the reason.
"""

import os
import subprocess
import sys

import pytest

# The errors of a machine without NVVM / NVRTC; any other failure is the script's.
_MISSING = ("DynamicLibNotFoundError", "NvvmSupportError", "CudaSupportError")


def run_outside_the_simulator(script: str) -> str:
    """Run ``script`` in a fresh interpreter with the real compiler; returns its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    if result.returncode and any(e in result.stderr for e in _MISSING):
        last = result.stderr.strip().splitlines()[-1:] or ["?"]
        pytest.skip(f"no CUDA compiler toolchain here ({last[0][:200]})")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
