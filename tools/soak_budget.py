"""Soak the cost budget: many OS processes reserving and settling random costs against one small
budget on a real redis-server, some of them killed (os._exit) while holding a reservation.

    .venv/bin/python tools/soak_budget.py --workers 8 --operations 300 [--redis URL] [--kill 2]

Each worker loops: reserve a random worst-case cost; then settle a random actual cost no larger
than it, or (one time in ten) release it. A killed worker exits between reserve and settle. Each
worker records what it settled in shared memory before reporting, so a kill loses nothing of the
tally. After every worker has ended and one lease has passed, the budget must hold exactly what
was settled: spent + reserved == sum of settled, reserved == 0 (the dead workers' leases were
given back) and spent <= limit. The last line printed is JSON; the exit code is 1 on any breach.
Without --redis a redis-server is started on a free loopback port (persistence off) and stopped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from course_lib.budget import Budget, BudgetExhausted
from local_redis import redis_server  # tools/, beside this script

KEY = "soak"
MICRO = 1_000_000




def _worker(index: int, args: argparse.Namespace, url: str, die_at: int, settled: object, counts: object) -> None:
    """One process: `args.operations` reserve/settle rounds; dies holding a reservation once past
    round `die_at` (-1: never)."""
    rng = random.Random(args.seed * 1_000 + index)
    budget = Budget(redis.Redis.from_url(url), limit_usd=args.limit, name=args.name, lease_seconds=args.lease,
                    timeout=2.0)
    for round_ in range(args.operations):
        worst = rng.randint(1_000, args.max_cost_micros)  # micro-dollars, so the tally is exact
        try:
            held = budget.reserve(KEY, worst / MICRO)
        except BudgetExhausted:
            counts[index * 3 + 1] += 1  # type: ignore[index]
            continue
        counts[index * 3] += 1  # type: ignore[index]
        if 0 <= die_at <= round_:
            os._exit(17)  # at its first reservation from round `die_at` on: never settled, never released
        if rng.random() < 0.1:
            budget.release(held)
            continue
        actual = rng.randint(0, worst)
        if budget.settle(held, actual / MICRO) == "settled":
            settled[index] += actual  # type: ignore[index]
            counts[index * 3 + 2] += 1  # type: ignore[index]


def soak(args: argparse.Namespace, url: str) -> dict[str, object]:
    client = redis.Redis.from_url(url)
    budget = Budget(client, limit_usd=args.limit, name=args.name, lease_seconds=args.lease, timeout=2.0)
    budget.reset(KEY)
    rng = random.Random(args.seed)
    doomed = set(rng.sample(range(args.workers), min(args.kill, args.workers)))
    settled = multiprocessing.Array("q", args.workers)  # micro-dollars settled, per worker
    counts = multiprocessing.Array("q", args.workers * 3)  # reserved, refused, settled rounds
    context = multiprocessing.get_context("fork")
    processes = []
    started = time.perf_counter()
    for index in range(args.workers):
        die_at = rng.randrange(min(3, args.operations)) if index in doomed else -1  # before the budget runs out
        process = context.Process(target=_worker, args=(index, args, url, die_at, settled, counts))
        process.start()
        processes.append(process)
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - started
    before = budget.status(KEY)  # dead workers' leases may still be held here
    time.sleep(args.lease + 0.1)
    after = budget.status(KEY)
    client.close()
    settled_micros = sum(settled[:])
    spent, reserved = round(after.spent_usd * MICRO), round(after.reserved_usd * MICRO)
    limit = round(args.limit * MICRO)
    rounds = [sum(counts[i::3]) for i in range(3)]
    codes = sorted({p.exitcode or 0 for p in processes})
    return {
        "workers": args.workers, "operations_per_worker": args.operations,
        "killed": sum(p.exitcode == 17 for p in processes),
        "exit_codes": codes, "reservations": rounds[0], "refusals": rounds[1],
        "settlements": rounds[2], "limit_usd": args.limit, "settled_usd": settled_micros / MICRO,
        "spent_usd": spent / MICRO, "reserved_usd_after_leases": reserved / MICRO,
        "reserved_usd_before_leases": before.reserved_usd, "overspent_usd": max(0, spent - limit) / MICRO,
        "leaked_usd": (spent + reserved - settled_micros) / MICRO, "seconds": round(elapsed, 3),
        "decisions_per_second": round(sum(rounds[:2]) / elapsed), "ok": spent + reserved == settled_micros
        and reserved == 0 and spent <= limit,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8, help="OS processes (default 8)")
    parser.add_argument("--operations", type=int, default=300, help="reserve/settle rounds per worker")
    parser.add_argument("--kill", type=int, default=2, help="workers that die holding a reservation")
    parser.add_argument("--limit", type=float, default=2.0, help="the budget in dollars (small, so it runs out)")
    parser.add_argument("--max-cost-micros", type=int, default=40_000, help="largest worst-case cost, micro-dollars")
    parser.add_argument("--lease", type=float, default=0.5, help="lease seconds")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--name", default="soak")
    parser.add_argument("--redis", default=None, help="redis URL (default: start a redis-server)")
    args = parser.parse_args(argv)
    for field, value, low in (("--workers", args.workers, 1), ("--operations", args.operations, 1),
                              ("--kill", args.kill, 0), ("--max-cost-micros", args.max_cost_micros, 1_000)):
        if value < low:
            parser.error(f"{field} must be >= {low}, got {value}")
    with redis_server(args.redis) as url:
        result = soak(args, url)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
