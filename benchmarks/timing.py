"""The timers the benchmark scripts share.

``median_time(fn, repeats)`` warms ``fn`` up, then calls it ``repeats`` times, and returns
(median, best) seconds. The median is the figure the scripts compare; the best is printed
beside it because on a machine shared with other work it is the closer estimate of the
uncontended time. ``timed_interleaved(functions, repeat)`` does the same for several
contenders at once, in turn within each round, so that they share the machine's load.

The warm-up (``warm_up``) is one call (Numba's compilation, caches) and then more calls
until ``WARM_UP_SECONDS`` have passed. One call was not enough on the 2-core VMs of
benchmarks/RESULTS.md: there the first second or so of a process's large allocations
lands on memory the hypervisor has not yet backed, and faulting it in costs the kernel
time (the channels-last copy of a (1, 256, 200, 200) map, a fresh 41 MB each call, took
70-100 ms for its first calls, 0.34 s of system time for four, and then 10-12 ms with the
same number of page faults; importing torch, which allocates a lot, started it again).
Timing after that measures the code rather than the VM's first touch, for every
contender alike.
"""

from __future__ import annotations

import statistics
import time

WARM_UP_SECONDS = 1.0


def warm_up(fn, seconds: float = WARM_UP_SECONDS) -> None:
    """Call ``fn`` once (compilation, caches), then again until ``seconds`` have passed
    since that call: with seconds > 0 at least once more, with 0 not at all."""
    fn()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()


def median_time(fn, repeats: int, seconds: float = WARM_UP_SECONDS) -> tuple[float, float]:
    """(median, best) wall-clock seconds of ``repeats`` calls of ``fn`` after a warm-up
    of ``seconds`` (``warm_up``)."""
    warm_up(fn, seconds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def timed_interleaved(functions: dict, repeat: int, seconds: float = WARM_UP_SECONDS) -> dict:
    """Median seconds of each function (a dict name -> callable), run in turn each round.

    Interleaving gives every contender the same share of whatever else the machine is
    doing (the 2-core machines are shared), instead of one of them a quiet minute.
    ``seconds=0`` warms up with the one call alone (for the slow NumPy references).
    """
    for function in functions.values():
        warm_up(function, seconds)
    times = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
