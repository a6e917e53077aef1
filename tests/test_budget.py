"""Cost budgets on Redis: exact micro-dollar arithmetic, refusals with their numbers, leases that
expire, all-or-none over several budgets, Redis failure policies, and no overspending under
concurrency where check-then-spend does overspend."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import fakeredis
import pytest
import redis
import redis.asyncio
from redis.crc import key_slot

from course_lib.budget import (
    AsyncBudget,
    Budget,
    BudgetExhausted,
    BudgetUnavailable,
    Reservation,
    areserve_all,
    asettle_all,
    release_all,
    reserve_all,
    settle_all,
)
from course_lib.clock import VirtualClock
from course_lib.events import BudgetChanged, Recorder, StoreFallback

ROOT = Path(__file__).resolve().parents[1]
MIDNIGHT = 1_767_225_600.0  # 2026-01-01T00:00Z
CLOSED_PORT = 1  # nothing listens there: connections are refused at once


def changes(events: Recorder) -> list[tuple[str, str, float, float]]:
    return [(e.key, e.action, e.amount_usd, e.spent_usd) for e in events.of(BudgetChanged)]


def test_reserve_settle_release_are_exact_to_the_micro_dollar(redis_client: redis.Redis) -> None:
    events = Recorder()
    budget = Budget(redis_client, limit_usd=1.0, name="user", on_event=events)
    first, second, third = (budget.reserve("alice", 0.1 + 0.2) for _ in range(3))  # 0.30000000000000004 each
    assert first.amount_usd == 0.300001  # rounded up to the micro-dollar, never down
    last = budget.reserve("alice", 0.099997)  # exactly up to the limit
    assert budget.status("alice").reserved_usd == 1.0
    with pytest.raises(BudgetExhausted) as refused:
        budget.reserve("alice", 0.000001)
    assert (refused.value.spent_usd, refused.value.reserved_usd, refused.value.requested_usd,
            refused.value.limit_usd, refused.value.key) == (0.0, 1.0, 0.000001, 1.0, "alice")
    assert budget.settle(first, 0.123456) == "settled"  # the rest of the 0.300001 comes back
    assert budget.release(second) == "released"
    status = budget.status("alice")
    assert (status.spent_usd, status.reserved_usd, status.remaining_usd) == (0.123456, 0.399998, 0.476546)
    assert budget.settle(third, 0.3) == "settled" and budget.settle(last, 0.0) == "settled"
    assert budget.status("alice").spent_usd == 0.423456
    assert budget.status("bob").spent_usd == 0.0  # keys are separate
    assert changes(events) == [
        *[("alice", "reserved", 0.300001, 0.0)] * 3, ("alice", "reserved", 0.099997, 0.0),
        ("alice", "refused", 0.000001, 0.0), ("alice", "settled", 0.123456, 0.123456),
        ("alice", "released", 0.300001, 0.123456), ("alice", "settled", 0.3, 0.423456),
        ("alice", "settled", 0.0, 0.423456)]
    assert all(e.limit_usd == 1.0 and e.source == "user" for e in events.of(BudgetChanged))


def test_refusal_carries_the_reset_time_and_the_budget_resets_at_midnight_utc(redis_client: redis.Redis) -> None:
    clock = VirtualClock(wall_start=MIDNIGHT + 23 * 3600)  # 23:00 UTC
    budget = Budget(redis_client, limit_usd=0.5, name="user", clock=clock, lease_seconds=3600)
    budget.settle(budget.reserve("alice", 0.5), 0.45)
    clock.advance(1800)
    with pytest.raises(BudgetExhausted) as refused:
        budget.reserve("alice", 0.06)
    assert refused.value.reset_after == 1800.0 and refused.value.code == "budget_exhausted"
    assert "budget 'user' for 'alice' is exhausted" in str(refused.value) and "resets in 1800s" in str(refused.value)
    held = budget.reserve("alice", 0.05)  # 0.45 + 0.05 == 0.5: still fits
    clock.advance(1800 - 1)
    assert budget.status("alice").spent_usd == 0.45
    clock.advance(1)  # midnight: a new day, the lease still held
    status = budget.status("alice")
    assert (status.spent_usd, status.reserved_usd, status.reset_after) == (0.0, 0.05, 86_400.0)
    assert budget.settle(held, 0.04) == "settled"  # charged to the day it is settled in
    assert budget.status("alice").spent_usd == 0.04


def test_settling_more_than_reserved_charges_it_and_twice_charges_nothing_more(redis_client: redis.Redis) -> None:
    events = Recorder()
    budget = Budget(redis_client, limit_usd=1.0, name="user", on_event=events)
    held = budget.reserve("alice", 0.5)
    assert budget.settle(held, 1.2) == "settled"  # the money is spent: charge it
    assert budget.status("alice").spent_usd == 1.2
    assert budget.settle(held, 1.2) == "unknown" and budget.release(held) == "unknown"
    assert (budget.status("alice").spent_usd, budget.status("alice").reserved_usd) == (1.2, 0.0)
    assert [e.action for e in events.of(BudgetChanged)] == ["reserved", "settled"]
    with pytest.raises(BudgetExhausted):
        budget.reserve("alice", 0.0000001)  # rounds up to one micro-dollar, and nothing is left


def test_a_reservation_never_settled_is_swept_after_its_lease(redis_client: redis.Redis) -> None:
    events = Recorder()
    budget = Budget(redis_client, limit_usd=1.0, name="user", lease_seconds=0.3, on_event=events)
    dead = budget.reserve("alice", 0.7)  # the worker holding it "dies"
    late = budget.reserve("alice", 0.3)
    with pytest.raises(BudgetExhausted):
        budget.reserve("alice", 0.2)
    assert dead.expires - time.time() == pytest.approx(0.3, abs=0.1)
    time.sleep(0.35)
    status = budget.status("alice")
    assert (status.spent_usd, status.reserved_usd, status.remaining_usd) == (0.0, 0.0, 1.0)  # whole again
    assert changes(events)[-1] == ("alice", "expired", 1.0, 0.0)
    assert budget.settle(late, 0.25) == "expired"  # a late settle still charges what was spent
    assert budget.release(dead) == "expired" and budget.release(dead) == "unknown"  # nothing left to give back
    assert budget.status("alice").spent_usd == 0.25
    assert changes(events)[-1] == ("alice", "expired", 0.25, 0.25)


def test_free_reservations_release_and_expire_cleanly(redis_client: redis.Redis) -> None:
    budget = Budget(redis_client, limit_usd=1.0, name="user", lease_seconds=0.05)
    assert budget.release(budget.reserve("alice", 0.0)) == "released"
    budget.reserve("alice", 0)
    time.sleep(0.06)
    status = budget.status("alice")
    assert (status.spent_usd, status.reserved_usd) == (0.0, 0.0)


def test_keys_share_one_hash_tag_and_expire_after_the_period(redis_client: redis.Redis) -> None:
    clock = VirtualClock(wall_start=MIDNIGHT + 86_400 - 100)  # 100 s before midnight
    budget = Budget(redis_client, limit_usd=1.0, name="user", clock=clock, lease_seconds=10)
    budget.reserve("alice", 0.1)
    keys = budget.keys("alice")
    assert keys[0] == "{course_lib:budget:user:alice}" and len({key_slot(k.encode()) for k in keys}) == 1
    assert sorted(k.decode() for k in redis_client.keys("*")) == sorted(keys)
    for key in keys:  # past the period's end and the longest lease, with a margin
        assert 100 + 10 + 60 - 2 <= redis_client.pttl(key) / 1000 <= 100 + 10 + 60


def test_reserve_all_holds_every_budget_or_none(redis_client: redis.Redis) -> None:
    events = Recorder()
    users = Budget(redis_client, limit_usd=1.0, name="user", on_event=events)
    everyone = Budget(redis_client, limit_usd=0.5, name="global", on_event=events)
    held = reserve_all([(users, "alice"), (everyone, "all")], 0.3)
    with pytest.raises(BudgetExhausted) as refused:  # the global budget refuses: alice's hold is rolled back
        reserve_all([(users, "alice"), (everyone, "all")], 0.3)
    assert refused.value.name == "global"
    assert (users.status("alice").reserved_usd, everyone.status("all").reserved_usd) == (0.3, 0.3)
    assert settle_all(held, 0.2) == ["settled", "settled"]
    again = reserve_all([(users, "alice"), (everyone, "all")], 0.3)
    assert release_all(again) == ["released", "released"]
    assert (users.status("alice").spent_usd, everyone.status("all").spent_usd) == (0.2, 0.2)
    assert [(e.source, e.action) for e in events.of(BudgetChanged)] == [
        ("user", "reserved"), ("global", "reserved"), ("user", "reserved"), ("global", "refused"), ("user", "released"),
        ("user", "settled"), ("global", "settled"), ("user", "reserved"), ("global", "reserved"), ("user", "released"),
        ("global", "released")]


def test_redis_down_fails_closed_by_default_and_open_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    server = fakeredis.FakeServer()
    events = Recorder()
    closed = Budget(fakeredis.FakeRedis(server=server), limit_usd=1.0, name="global", on_event=events)
    opened = Budget(fakeredis.FakeRedis(server=server), limit_usd=1.0, name="user", on_event=events,
                    on_redis_error="open")
    server.connected = False
    with pytest.raises(BudgetUnavailable) as refused:
        closed.reserve("all", 0.1)
    assert refused.value.code == "budget_unavailable" and refused.value.operation == "reserve"
    local = opened.reserve("alice", 0.4)
    assert (local.shared, local.amount_usd) == (False, 0.4)
    shared_before = Reservation("r1", "alice", 0.1, 0.0, "user")
    assert opened.settle(shared_before, 0.1) == "unavailable"
    with pytest.raises(BudgetUnavailable):
        opened.status("alice")
    assert [(e.source, e.operation) for e in events.of(StoreFallback)] == [
        ("global", "reserve"), ("user", "reserve"), ("user", "settle"), ("user", "status")]
    assert "Redis reserve failed" in caplog.text and caplog.text.count("WARNING") == 2  # one per budget's outage
    server.connected = True
    assert opened.settle(local, 0.25) == "settled"  # what a fail-open call spent is still charged
    assert opened.status("alice").spent_usd == 0.25 and closed.status("all").spent_usd == 0.0
    assert opened.release(opened.reserve("alice", 0.1)) == "released"


def test_an_unreachable_server_never_raises_a_redis_error() -> None:
    budget = Budget(redis.Redis(host="127.0.0.1", port=CLOSED_PORT), limit_usd=1.0, name="user")
    started = time.perf_counter()
    with pytest.raises(BudgetUnavailable) as refused:
        budget.reserve("alice", 0.1)
    assert "ConnectionError" in refused.value.error and time.perf_counter() - started < 1.0


@pytest.mark.parametrize(("setting", "message"), [
    ({"limit_usd": 0}, "limit_usd must be a number of dollars > 0 and <= 1,000,000, got 0"),
    ({"limit_usd": float("inf")}, "limit_usd must be a number of dollars > 0"),
    ({"limit_usd": 2_000_000}, "<= 1,000,000, got 2000000"),
    ({"name": "a{b}"}, "name must be 1-64 characters without braces"),
    ({"period": "week"}, "period must be one of ['day', 'hour', 'minute'], got 'week'"),
    ({"lease_seconds": 0}, "lease_seconds must be >= 0.001 and <= the period (86400 s), got 0"),
    ({"period": "minute", "lease_seconds": 61}, "<= the period (60 s), got 61"),
    ({"on_redis_error": "ignore"}, "on_redis_error must be 'closed' or 'open', got 'ignore'"),
    ({"timeout": 0}, "timeout must be > 0 seconds or None, got 0"),
])
def test_configuration_errors_name_the_field_and_the_limit(setting: dict[str, object], message: str) -> None:
    config: dict[str, object] = {"limit_usd": 1.0, "name": "user", **setting}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Budget(fakeredis.FakeRedis(), **config)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        AsyncBudget(fakeredis.FakeAsyncRedis(), **config)  # type: ignore[arg-type]


def test_bad_amounts_keys_reservations_and_clients_are_refused_clearly() -> None:
    budget = Budget(fakeredis.FakeRedis(), limit_usd=1.0, name="user")
    for amount in (-0.01, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="amount_usd must be a number of dollars >= 0 and <= 1,000,000"):
            budget.reserve("alice", amount)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key must be 1-256 characters, got ''"):
        budget.reserve("", 0.1)
    held = budget.reserve("alice", 0.1)
    with pytest.raises(ValueError, match="actual_usd must be a number of dollars >= 0"):
        budget.settle(held, -1)
    other = Budget(fakeredis.FakeRedis(), limit_usd=1.0, name="global")
    with pytest.raises(ValueError, match="reservation must be a reservation of budget 'global', got 'user'"):
        other.settle(held, 0.1)
    with pytest.raises(TypeError, match="for a redis.asyncio client use AsyncBudget"):
        Budget(fakeredis.FakeAsyncRedis(), limit_usd=1.0, name="user")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="for a synchronous client use Budget"):
        AsyncBudget(fakeredis.FakeRedis(), limit_usd=1.0, name="user")  # type: ignore[arg-type]


# --- the async budget ---------------------------------------------------------------------------
@pytest.fixture(params=["fakeredis", "redis-server"])
def make_async_client(request: pytest.FixtureRequest) -> Callable[[], redis.asyncio.Redis]:
    """Makes a redis.asyncio client inside the running event loop (clients belong to one loop)."""
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()
        return lambda: fakeredis.FakeAsyncRedis(server=server)
    url = request.getfixturevalue("redis_server_url")
    redis.Redis.from_url(url).flushdb()
    return lambda: redis.asyncio.Redis.from_url(url)


async def test_async_budget_reserves_settles_and_rolls_back_like_the_sync_one(
        make_async_client: Callable[[], redis.asyncio.Redis]) -> None:
    client, events = make_async_client(), Recorder()
    users = AsyncBudget(client, limit_usd=1.0, name="user", on_event=events)
    everyone = AsyncBudget(client, limit_usd=0.5, name="global", on_event=events)
    held = await areserve_all([(users, "alice"), (everyone, "all")], 0.3)
    with pytest.raises(BudgetExhausted):
        await areserve_all([(users, "alice"), (everyone, "all")], 0.3)
    assert await asettle_all(held, 0.123456) == ["settled", "settled"]
    status = await users.status("alice")
    assert (status.spent_usd, status.reserved_usd) == (0.123456, 0.0)
    actions = [(e.source, e.action) for e in events.of(BudgetChanged)]
    assert actions[3:5] == [("global", "refused"), ("user", "released")]
    await client.aclose()


async def test_async_budget_fails_closed_without_redis() -> None:
    events = Recorder()
    budget = AsyncBudget(redis.asyncio.Redis(host="127.0.0.1", port=CLOSED_PORT), limit_usd=1.0, name="global",
                         on_event=events)
    with pytest.raises(BudgetUnavailable):
        await budget.reserve("all", 0.1)
    assert [e.operation for e in events.of(StoreFallback)] == ["reserve"]


# --- concurrency: reserve/settle never overspends; check-then-spend does -----------------------------
WORKERS, ROUNDS, LIMIT_MICROS = 8, 40, 200_000  # a $0.20 budget against ~8 x 40 x $0.01 of demand


def _plan(seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    plan = []
    for _ in range(ROUNDS):
        worst = rng.randint(1_000, 20_000)
        plan.append((worst, rng.randint(0, worst)))
    return plan


def _account(budget: Budget) -> tuple[int, int]:
    status = budget.status("shared")
    return round(status.spent_usd * 1e6), round(status.reserved_usd * 1e6)


def test_threads_reserving_and_settling_never_overspend(redis_server_url: str) -> None:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    budget = Budget(client, limit_usd=LIMIT_MICROS / 1e6, name="threads")
    settled, refused = [0] * WORKERS, [0] * WORKERS

    def worker(index: int) -> None:
        own = Budget(redis.Redis.from_url(redis_server_url), limit_usd=LIMIT_MICROS / 1e6, name="threads")
        for worst, actual in _plan(index):
            try:
                held = own.reserve("shared", worst / 1e6)
            except BudgetExhausted:
                refused[index] += 1
                continue
            assert own.settle(held, actual / 1e6) == "settled"
            settled[index] += actual

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spent, reserved = _account(budget)
    assert (spent, reserved) == (sum(settled), 0)
    assert spent <= LIMIT_MICROS and sum(refused) > 0  # the budget was binding, and held exactly


async def test_asyncio_tasks_reserving_and_settling_never_overspend(redis_server_url: str) -> None:
    redis.Redis.from_url(redis_server_url).flushdb()
    client = redis.asyncio.Redis.from_url(redis_server_url)
    budget = AsyncBudget(client, limit_usd=LIMIT_MICROS / 1e6, name="tasks")
    settled: list[int] = []

    async def worker(index: int) -> int:
        refusals = 0
        for worst, actual in _plan(100 + index):
            try:
                held = await budget.reserve("shared", worst / 1e6)
            except BudgetExhausted:
                refusals += 1
                continue
            await asyncio.sleep(0)  # the "model call": let the other tasks in between
            assert await budget.settle(held, actual / 1e6) == "settled"
            settled.append(actual)
        return refusals

    refusals = await asyncio.gather(*(worker(i) for i in range(WORKERS)))
    status = await budget.status("shared")
    assert (round(status.spent_usd * 1e6), status.reserved_usd) == (sum(settled), 0.0)
    assert round(status.spent_usd * 1e6) <= LIMIT_MICROS and sum(refusals) > 0
    await client.aclose()


def _race(barrier: threading.Barrier, spend: Callable[[], bool]) -> int:
    """Run `spend` in WORKERS threads released together; how many were let through."""
    let_through: list[bool] = []

    def worker() -> None:
        barrier.wait()
        let_through.append(spend())

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(let_through)


def test_check_then_spend_overspends_where_reserve_does_not(redis_server_url: str) -> None:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    limit, cost = 30_000, 10_000  # room for 3 calls of $0.01
    checked = threading.Barrier(WORKERS)

    def naive() -> bool:
        own = redis.Redis.from_url(redis_server_url)
        balance = int(own.get("naive:spent") or 0)
        checked.wait()  # every worker has checked before any spends: the race, made certain
        if balance + cost > limit:
            return False
        own.incrby("naive:spent", cost)
        return True

    assert _race(threading.Barrier(WORKERS), naive) == WORKERS
    assert int(client.get("naive:spent")) == WORKERS * cost  # $0.08 spent of a $0.03 budget

    budget = Budget(client, limit_usd=limit / 1e6, name="race")

    def reserved() -> bool:
        try:
            Budget(redis.Redis.from_url(redis_server_url), limit_usd=limit / 1e6, name="race").reserve("x", cost / 1e6)
        except BudgetExhausted:
            return False
        return True

    assert _race(threading.Barrier(WORKERS), reserved) == 3
    assert budget.status("x").reserved_usd == 0.03


def test_soak_tool_processes_killed_mid_reservation_leak_nothing(redis_server_url: str) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "soak_budget.py"), "--workers", "8",
                          "--operations", "60",
                          "--kill", "2", "--lease", "0.4", "--redis", redis_server_url],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert (result["workers"], result["killed"], result["exit_codes"]) == (8, 2, [0, 17])
    assert result["overspent_usd"] == 0 and result["leaked_usd"] == 0 and result["reserved_usd_after_leases"] == 0
    assert result["spent_usd"] == result["settled_usd"] <= result["limit_usd"] and result["refusals"] > 0
