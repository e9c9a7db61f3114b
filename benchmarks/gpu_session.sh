#!/usr/bin/env bash
# The one prepared call for a session that is lent a GPU (issue #13, item 4), run from the
# repository root on the GPU machine:
#
#     bash benchmarks/gpu_session.sh        # writes env.txt, pytest_gpu.log, gpu_bench.log to $OUT
#
# 1. installs this checkout (pip, no downloads: the machine has no network; pycocotools,
#    missing from its image, travels as a wheel in .whl/ when present);
# 2. runs the CUDA tests on the real device (pytest -m gpu: the simulator off);
# 3. runs benchmarks/gpu.py (the cuda backend against torchvision on the same GPU).
# Each step has its own time limit, so that a hang in one leaves time for the others.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2 \
    || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
    nproc; uptime
    python3 -c "import numba, numpy, torch; from numba import cuda; \
print('numba', numba.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__); \
print('numba sees a GPU:', cuda.is_available()); cuda.detect()"
    python3 -m pip list 2>/dev/null | grep -i -E "^(numba|numba-cuda|llvmlite|cuda-|nvidia-cuda|torchvision|hypothesis|pytest)"
} 2>&1 | tee "$OUT/env.txt"
timeout "${PYTEST_LIMIT:-180}" python3 -m pytest -m gpu -n 8 -q -rfEs 2>&1 | tee "$OUT/pytest_gpu.log"
timeout "${BENCH_LIMIT:-170}" python3 benchmarks/gpu.py --repeats 10 2>&1 | tee "$OUT/gpu_bench.log"
