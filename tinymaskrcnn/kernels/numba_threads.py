"""How many threads a Numba CPU kernel runs on: every thread for large work, one for small.

Numba's OpenMP workers sleep between parallel regions (``OMP_WAIT_POLICY=PASSIVE``, set in
``kernels/__init__.py`` so that they do not spin against BLAS's threads), so every region
first wakes them. On a 2-core VM that costs 40-70 us a region (benchmarks/RESULTS.md,
"An Intel AVX-512 VM ..."; ``benchmarks/small_kernels.py``): im2col of a 64 x 8 x 8 map
took 73 us on two threads and 23 us on one. Below ``PARALLEL_MIN_WORK`` elements a kernel
therefore runs on the calling thread alone. In the shapes model's inference, whose some
sixty regions are mostly small, that measured the same as all threads on a quiet VM (the
switch costs 3-6 us a call); it is there for the small kernels' own time, and for a
machine where another process holds a core and a woken worker may wait a time slice.

``numba.set_num_threads(1)`` around the call, rather than a second, serial compilation
(as the box kernels have): no kernel is compiled twice, and the parallel compilation
lowers array-slice copies to plain loops, which a serial one does not (the slice-copy
im2col of ce0f19f ran 3x slower serially compiled). The count is per calling thread in
Numba, so other threads are unaffected.
"""

from __future__ import annotations

from contextlib import contextmanager

import numba

# Elements read or written. Between 2**19 and 2**21 two threads began to win over one for
# im2col on the VM of the measurement above (590k elements: 192 us on two, 141 us on
# one; 2.4M: 493 us against 557).
PARALLEL_MIN_WORK = 1 << 20


@contextmanager
def threads_for(work: int):
    """Run the block on one thread when ``work`` (elements) is below PARALLEL_MIN_WORK."""
    if work >= PARALLEL_MIN_WORK:
        yield
        return
    threads = numba.get_num_threads()
    if threads == 1:  # already serial, as the shapes recipe trains: two set calls saved
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)
