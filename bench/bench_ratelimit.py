"""Rate-limit decisions per second on one real redis-server, in one process, sync and async:
course_lib.ratelimit (sliding log, GCRA) vs the `limits` library (moving window, sliding-window
counter) vs a bare PING loop, the one-round-trip ceiling (target: at least 0.9 of it), and vs
an empty Lua script (`return 1` by EVALSHA): the ceiling for any limiter that decides in one script,
since redis-py spends more on EVALSHA's arguments and Redis on starting a script than on a PING.

    python bench/bench_ratelimit.py [--redis URL] [--decisions 5000]

Starts its own redis-server on a free loopback port unless --redis is given. `limits` is
optional (`pip install limits`; its `[redis]` extra would downgrade redis-py below 8, and the
plain package uses the redis-py already installed): without it those rows are left out. Every
limiter admits everything here (a limit of a million), so each decision is the full write path.
Rounds alternate between the contenders and each keeps its best round, so that other load on
the machine (client and server share 2 cores here) hits all of them alike.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import redis
import redis.asyncio
from local_redis import redis_server  # tools/local_redis.py

from course_lib.ratelimit import AsyncRateLimiter, RateLimiter

LIMIT, WINDOW, REPEATS = 1_000_000, 60, 10
EMPTY_SCRIPT = "return 1"  # one key and three arguments, as a limiter decision sends


def rate_sync(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - started)


async def rate_async(fn: Callable[[], Awaitable[object]], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await fn()
    return n / (time.perf_counter() - started)


def limits_version() -> str | None:
    try:
        return version("limits")
    except PackageNotFoundError:
        return None


def sync_contenders(url: str) -> dict[str, Callable[[], object]]:
    client = redis.Redis.from_url(url)
    log = RateLimiter(client, limit=LIMIT, window=WINDOW, name="bench-log")
    gcra = RateLimiter(client, limit=LIMIT, window=WINDOW, algorithm="gcra", name="bench-gcra")
    empty = client.register_script(EMPTY_SCRIPT)
    contenders: dict[str, Callable[[], object]] = {
        "ping": client.ping, "empty script": lambda: empty(keys=["k"], args=[LIMIT, WINDOW, 1]),
        "course_lib sliding-log": lambda: log.hit("k"), "course_lib gcra": lambda: gcra.hit("k")}
    if limits_version():
        from limits import RateLimitItemPerMinute
        from limits.storage import storage_from_string
        from limits.strategies import (
            MovingWindowRateLimiter,
            SlidingWindowCounterRateLimiter,
        )

        storage, item = storage_from_string(url), RateLimitItemPerMinute(LIMIT)
        moving, counter = MovingWindowRateLimiter(storage), SlidingWindowCounterRateLimiter(storage)
        contenders["limits moving-window"] = lambda: moving.hit(item, "k")
        contenders["limits sliding-window-counter"] = lambda: counter.hit(item, "k")
    return contenders


async def async_rates(url: str, n: int) -> dict[str, float]:
    client = redis.asyncio.Redis.from_url(url)
    log = AsyncRateLimiter(client, limit=LIMIT, window=WINDOW, name="abench-log")
    gcra = AsyncRateLimiter(client, limit=LIMIT, window=WINDOW, algorithm="gcra", name="abench-gcra")
    empty = client.register_script(EMPTY_SCRIPT)
    contenders: dict[str, Callable[[], Awaitable[object]]] = {
        "ping": client.ping, "empty script": lambda: empty(keys=["k"], args=[LIMIT, WINDOW, 1]),
        "course_lib sliding-log": lambda: log.hit("k"), "course_lib gcra": lambda: gcra.hit("k")}
    if limits_version():
        from limits import RateLimitItemPerMinute
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import (
            MovingWindowRateLimiter,
            SlidingWindowCounterRateLimiter,
        )

        storage = RedisStorage(url.replace("redis://", "async+redis://"), implementation="redispy")
        item = RateLimitItemPerMinute(LIMIT)
        moving, counter = MovingWindowRateLimiter(storage), SlidingWindowCounterRateLimiter(storage)
        contenders["limits moving-window"] = lambda: moving.hit(item, "ak")
        contenders["limits sliding-window-counter"] = lambda: counter.hit(item, "ak")
    best = {name: 0.0 for name in contenders}
    for fn in contenders.values():
        await rate_async(fn, 200)  # warm up: connections, script loading
    for _ in range(REPEATS):
        for name, fn in contenders.items():
            best[name] = max(best[name], await rate_async(fn, n))
    await client.aclose()
    return best


def sync_rates(url: str, n: int) -> dict[str, float]:
    contenders = sync_contenders(url)
    best = {name: 0.0 for name in contenders}
    for fn in contenders.values():
        rate_sync(fn, 200)
    for _ in range(REPEATS):  # interleaved, so drift in machine speed hits every contender alike
        for name, fn in contenders.items():
            best[name] = max(best[name], rate_sync(fn, n))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="URL of a running server (default: start one on a free port)")
    parser.add_argument("--decisions", type=int, default=1000, help="per contender and round (best of 10 rounds)")
    args = parser.parse_args()
    with redis_server(args.redis) as url:
        figures = {"sync": sync_rates(url, args.decisions), "async": asyncio.run(async_rates(url, args.decisions))}
    ratios = {}
    for mode, rates in figures.items():
        ceiling = rates["ping"]
        ratios[mode] = {name: round(rate / ceiling, 3) for name, rate in rates.items() if name != "ping"}
        for name, rate in rates.items():
            print(f"{mode:5} {name:32} {rate:9,.0f} decisions/s  {rate / ceiling:5.2f} of PING")
    if not limits_version():
        print("limits is not installed: its rows are left out (pip install limits)")
    print(json.dumps({"bench": "ratelimit", "limits": limits_version(), "redis_py": redis.__version__,
                      "decisions_per_second": {m: {k: round(v) for k, v in r.items()} for m, r in figures.items()},
                      "ratio_to_ping": ratios, "target_ratio": 0.9}))


if __name__ == "__main__":
    main()
