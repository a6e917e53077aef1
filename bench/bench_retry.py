"""Retry overhead on a call that succeeds at once: course_lib.retry vs tenacity, in one process.

Prints a line per measurement and, last, one JSON object with the figures and the ratio
(course_lib's added cost / tenacity's added cost; the target is at most 0.1).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import timeit

import tenacity

from course_lib.retry import RetryPolicy, Retrier

CALLS = 20_000
REPEATS = 7


def target() -> int:
    return 42


async def async_target() -> int:
    return 42


def per_call_ns(fn) -> float:
    """Best of several repeats, in nanoseconds per call (the minimum is the least noisy)."""
    fn()  # warm up
    return min(timeit.repeat(fn, number=CALLS, repeat=REPEATS)) / CALLS * 1e9


def per_async_call_ns(fn) -> float:
    async def many() -> None:
        for _ in range(CALLS):
            await fn()

    def once() -> None:
        asyncio.run(many())

    return per_call_ns_of(once)


def per_call_ns_of(batch) -> float:
    batch()
    return min(timeit.repeat(batch, number=1, repeat=REPEATS)) / CALLS * 1e9


def main() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=0.1, jitter="full")
    ours = Retrier(policy).wrap(target)
    theirs = tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.1),
        reraise=True,
    )(target)

    bare = per_call_ns(target)
    ours_ns = per_call_ns(ours)
    theirs_ns = per_call_ns(theirs)
    ratio = (ours_ns - bare) / (theirs_ns - bare)

    abare = per_async_call_ns(async_target)
    aours = per_async_call_ns(Retrier(policy).wrap(async_target))
    atheirs = per_async_call_ns(tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True)(async_target))
    aratio = (aours - abare) / (atheirs - abare)

    print(f"sync : bare {bare:8.0f} ns | course_lib +{ours_ns - bare:7.0f} ns | tenacity +{theirs_ns - bare:7.0f} ns | ratio {ratio:.3f}")
    print(f"async: bare {abare:8.0f} ns | course_lib +{aours - abare:7.0f} ns | tenacity +{atheirs - abare:7.0f} ns | ratio {aratio:.3f}")
    print(json.dumps({
        "bench": "retry_overhead_success",
        "python": sys.version.split()[0],
        "tenacity": tenacity.__version__ if hasattr(tenacity, "__version__") else "?",
        "overhead_ns": {"course_lib": round(ours_ns - bare), "tenacity": round(theirs_ns - bare)},
        "async_overhead_ns": {"course_lib": round(aours - abare), "tenacity": round(atheirs - abare)},
        "ratio_sync": round(ratio, 4),
        "ratio_async": round(aratio, 4),
        "target": 0.1,
    }))


if __name__ == "__main__":
    main()
