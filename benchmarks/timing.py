"""The timer the benchmark scripts share.

``median_time(fn, repeats)`` runs ``fn`` once untimed (Numba's compilation, caches,
first-touch allocation), then ``repeats`` times, and returns (median, best) seconds. The
median is the figure the scripts compare; the best is printed beside it because on a
machine shared with other work it is the closer estimate of the uncontended time.
"""

from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int) -> tuple[float, float]:
    """(median, best) wall-clock seconds of ``repeats`` calls of ``fn`` after a warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)
