"""Exactness soak for course_lib.ratelimit: several OS processes, one real redis-server, shared limits.

    python tools/soak_ratelimit.py                       # 4,000 requests, starts its own redis-server
    python tools/soak_ratelimit.py --requests 100000     # the full run
    python tools/soak_ratelimit.py --redis redis://127.0.0.1:6379/0

Every request hits a sliding-log limiter (cost 1) and a GCRA limiter (cost 1-3) on one shared key.
Each process records (Redis time of the decision from the script, allowed, cost); afterwards the
recorded times are checked against a reference:
- sliding log: no window (t - W, t] ending at an admission holds more than `limit` admissions,
  and no refusal happened while that window held fewer than `limit` (ties in the same
  microsecond count for the refusal, so this side of the check can only under-report);
- GCRA: its own bound, at most `limit + d / interval` units in any d seconds, and its error as a
  sliding window: the most units it admitted inside any window of W seconds.
Loops are bounded by --requests and --max-seconds. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from course_lib.ratelimit import RateLimiter
from local_redis import redis_server  # tools/, beside this script

Record = tuple[int, bool, int]  # (Redis time in microseconds, allowed, cost)


def worker(url: str, run: str, limit: int, window: float, requests: int, start_at: float, deadline: float,
           seed: int) -> dict[str, list[Record]]:
    client = redis.Redis.from_url(url)
    log = RateLimiter(client, limit=limit, window=window, name=f"soak-log-{run}")
    gcra = RateLimiter(client, limit=limit, window=window, algorithm="gcra", name=f"soak-gcra-{run}")
    rng = random.Random(seed)
    records: dict[str, list[Record]] = {"sliding-log": [], "gcra": []}
    time.sleep(max(0.0, start_at - time.time()))  # all processes start together
    for _ in range(requests):
        if time.time() > deadline:
            break
        for name, limiter, cost in (("sliding-log", log, 1), ("gcra", gcra, rng.randint(1, 3))):
            decision = limiter.hit("shared", cost)
            if decision.decided_by != "redis" or decision.time is None:
                raise RuntimeError(f"{name}: decided without Redis ({decision.decided_by})")
            records[name].append((round(decision.time * 1_000_000), decision.allowed, cost))
    client.close()
    return records


def max_in_window(admitted: list[Record], window_us: int) -> int:
    """The most units admitted inside any window (t - W, t] (windows ending at an admission)."""
    best, total, start = 0, 0, 0
    for t, _, cost in admitted:
        total += cost
        while admitted[start][0] <= t - window_us:
            total -= admitted[start][2]
            start += 1
        best = max(best, total)
    return best


def check_sliding_log(records: list[Record], limit: int, window_us: int) -> dict[str, Any]:
    admitted = sorted(r for r in records if r[1])
    times = [t for t, _, _ in admitted]
    over = sum(1 for j, t in enumerate(times) if j + 1 - bisect.bisect_right(times, t - window_us) > limit)
    wrongly_refused = sum(1 for t, allowed, _ in records if not allowed
                          and bisect.bisect_right(times, t) - bisect.bisect_right(times, t - window_us) < limit)
    return {"decisions": len(records), "admitted": len(admitted), "over_limit_windows": over,
            "wrongly_refused": wrongly_refused, "max_in_any_window": max_in_window(admitted, window_us)}


def check_gcra(records: list[Record], limit: int, window_us: int) -> dict[str, Any]:
    """GCRA's bound: units in [t_i, t_j] <= limit + (t_j - t_i) / interval, for every i <= j; one
    pass with the running minimum of (units before i) - t_i / interval."""
    admitted = sorted(r for r in records if r[1])
    interval = window_us / limit
    violations, before, lowest = 0, 0, float("inf")
    for t, _, cost in admitted:
        lowest = min(lowest, before - t / interval)
        before += cost
        if before - t / interval > limit + lowest + 1e-6:
            violations += 1
    most = max_in_window(admitted, window_us)
    return {"decisions": len(records), "admitted_units": before, "bound_violations": violations,
            "max_in_any_window": most, "window_error": round(most / limit - 1, 3)}




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="total requests over all processes")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--window", type=float, default=0.1, help="seconds")
    parser.add_argument("--redis", help="URL of a running server (default: start one on a free port)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after this long")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.requests < 1 or args.processes < 1:
        parser.error("--requests and --processes must be >= 1")

    with redis_server(args.redis) as url:
        run = f"{time.time_ns()}"
        share, extra = divmod(args.requests, args.processes)
        start_at = time.time() + 0.5
        jobs = [(url, run, args.limit, args.window, share + (i < extra), start_at, start_at + args.max_seconds,
                 args.seed + i) for i in range(args.processes)]
        started = time.perf_counter()
        with multiprocessing.get_context("fork").Pool(args.processes) as pool:
            results = pool.starmap(worker, jobs)
        seconds = time.perf_counter() - started - 0.5

    window_us = round(args.window * 1_000_000)
    log = check_sliding_log([r for result in results for r in result["sliding-log"]], args.limit, window_us)
    gcra = check_gcra([r for result in results for r in result["gcra"]], args.limit, window_us)
    decided = log["decisions"]
    print(f"{args.processes} processes, {decided} requests in {seconds:.1f} s "
          f"({2 * decided / seconds:,.0f} decisions/s)")
    print(f"sliding log: {log['admitted']} admitted, {log['over_limit_windows']} admissions over the limit, "
          f"{log['wrongly_refused']} refusals below it, most in one window {log['max_in_any_window']}/{args.limit}")
    print(f"gcra: {gcra['bound_violations']} violations of its bound, most units in one window "
          f"{gcra['max_in_any_window']}/{args.limit} (error {gcra['window_error']:+.0%} as a sliding window)")
    print(json.dumps({"soak": "ratelimit", "processes": args.processes, "requests": decided, "limit": args.limit,
                      "window": args.window, "seconds": round(seconds, 2), "sliding-log": log, "gcra": gcra}))
    ok = log["over_limit_windows"] == 0 and log["wrongly_refused"] == 0 and gcra["bound_violations"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
