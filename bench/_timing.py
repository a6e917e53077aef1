"""Timing shared by the bench scripts: best-of-N, with the contenders interleaved."""

from __future__ import annotations

import timeit
from collections.abc import Callable

CALLS, REPEATS = 20_000, 7


def per_call_ns(*fns: Callable[[], object], batched: bool = False) -> list[float]:
    """Best of REPEATS runs of CALLS calls for each fn, in ns per call (a batched fn makes the
    CALLS calls itself). The runs alternate between the fns so that drift in machine speed
    hits all of them alike; the minimum is the least noisy estimate."""
    number = 1 if batched else CALLS
    best = [float("inf")] * len(fns)
    for fn in fns:
        fn()
    for _ in range(REPEATS):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], timeit.timeit(fn, number=number) / CALLS * 1e9)
    return best
