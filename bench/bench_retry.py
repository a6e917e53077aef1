"""Retry overhead on a call that succeeds at once: course_lib.retry vs tenacity, in one process.

Both wrap the same function with a comparable policy (3 attempts, exponential backoff with full
jitter). The figure is the cost each adds over calling the function directly; the target is a
ratio of at most 0.1. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import asyncio
import json
from importlib.metadata import version

import tenacity

from _timing import CALLS, per_call_ns

from course_lib.retry import Retrier, RetryPolicy



def target() -> int:
    return 42


async def async_target() -> int:
    return 42


def per_async_call_ns(*fns) -> list[float]:
    def batch(fn):
        async def many() -> None:
            for _ in range(CALLS):
                await fn()

        return lambda: asyncio.run(many())

    return per_call_ns(*(batch(fn) for fn in fns), batched=True)


def main() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=0.1, jitter="full")
    theirs = tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_random_exponential(multiplier=0.1), reraise=True)

    bare, ours, tenacity_ns = per_call_ns(target, Retrier(policy).wrap(target), theirs(target))
    abare, aours, atenacity = per_async_call_ns(async_target, Retrier(policy).wrap(async_target), theirs(async_target))
    ours, tenacity_ns, aours, atenacity = ours - bare, tenacity_ns - bare, aours - abare, atenacity - abare

    print(f"sync : course_lib +{ours:.0f} ns, tenacity +{tenacity_ns:.0f} ns per call, ratio {ours / tenacity_ns:.3f}")
    print(f"async: course_lib +{aours:.0f} ns, tenacity +{atenacity:.0f} ns per call, ratio {aours / atenacity:.3f}")
    print(json.dumps({
        "bench": "retry_overhead_on_success",
        "tenacity": version("tenacity"),
        "overhead_ns": {"course_lib": round(ours), "tenacity": round(tenacity_ns)},
        "async_overhead_ns": {"course_lib": round(aours), "tenacity": round(atenacity)},
        "ratio": round(ours / tenacity_ns, 4),
        "async_ratio": round(aours / atenacity, 4),
        "target": 0.1,
    }))


if __name__ == "__main__":
    main()
