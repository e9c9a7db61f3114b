"""How many threads a Numba CPU kernel runs on: every thread for large work, one for small.

Numba's OpenMP workers sleep between parallel regions (``OMP_WAIT_POLICY=PASSIVE``, set in
``kernels/__init__.py`` so that they do not spin against BLAS's threads), so every region
first wakes them. On the 2-core VMs of benchmarks/RESULTS.md that costs 40-70 us a
region ("Small kernels on one thread"): im2col of a 64 x 10 x 10 map took 90 us on two
threads and 38 us on one, and the shapes model's inference starts some sixty regions.
Below ``PARALLEL_MIN_WORK`` elements a kernel therefore runs on the calling thread alone.

``numba.set_num_threads(1)`` around the call, rather than a second, serial compilation:
the parallel compilation lowers the kernels' slice copies to plain loops, which its
serial twin does not (im2col's serial twin measured 3x slower than the parallel one on
one thread). The count is per calling thread in Numba, so other threads are unaffected.
"""

from __future__ import annotations

from contextlib import contextmanager

import numba

# Elements read or written. Between 2**19 and 2**22 two threads began to win over one for
# im2col on the VM of the measurement above (590k elements: 181 us on two, 144 us on
# one; 4.7M: 0.49 ms against 0.90 ms).
PARALLEL_MIN_WORK = 1 << 20


@contextmanager
def threads_for(work: int):
    """Run the block on one thread when ``work`` (elements) is below PARALLEL_MIN_WORK."""
    if work >= PARALLEL_MIN_WORK:
        yield
        return
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)
