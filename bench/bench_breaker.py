"""Circuit breaker overhead and concurrency: course_lib.breaker vs pybreaker, in one process.

1. Overhead on a call that succeeds at once (target: at most 0.7x pybreaker's added cost).
2. Eight threads each making one 50 ms call through one shared breaker (target: under 2 x 50 ms;
   pybreaker holds its lock during the call, so its calls run one after another).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
import threading
import time
from importlib.metadata import version

import pybreaker

from _timing import per_call_ns

from course_lib.breaker import CircuitBreaker

THREADS, CALL_SECONDS = 8, 0.05


def target() -> int:
    return 42


def concurrent_seconds(call) -> float:
    """Wall time for THREADS threads each making one CALL_SECONDS call via `call`."""
    threads = [threading.Thread(target=call, args=(time.sleep, CALL_SECONDS)) for _ in range(THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def main() -> None:
    ours = CircuitBreaker()
    theirs = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    guarded = ours.wrap(target)

    bare, ours_ns, theirs_ns = per_call_ns(target, guarded, lambda: theirs.call(target))
    ours_ns, theirs_ns = ours_ns - bare, theirs_ns - bare
    ours_wall = min(concurrent_seconds(ours.call) for _ in range(3))
    theirs_wall = min(concurrent_seconds(theirs.call) for _ in range(3))

    print(f"overhead per successful call: course_lib {ours_ns:.0f} ns, pybreaker {theirs_ns:.0f} ns, ratio {ours_ns / theirs_ns:.2f}")
    print(f"{THREADS} threads x {CALL_SECONDS * 1000:.0f} ms calls: course_lib {ours_wall * 1000:.0f} ms, pybreaker {theirs_wall * 1000:.0f} ms")
    print(json.dumps({
        "bench": "breaker",
        "pybreaker": version("pybreaker"),
        "overhead_ns": {"course_lib": round(ours_ns), "pybreaker": round(theirs_ns)},
        "overhead_ratio": round(ours_ns / theirs_ns, 3),
        "overhead_target": 0.7,
        "concurrent_ms": {"course_lib": round(ours_wall * 1000, 1), "pybreaker": round(theirs_wall * 1000, 1)},
        "concurrent_target_ms": 2 * CALL_SECONDS * 1000,
    }))


if __name__ == "__main__":
    main()
