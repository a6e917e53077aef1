"""Redis rate limits: exact counts, refused requests not counted, Redis time, headers, TTLs and
hash tags, token costs, composition with give-back, and each policy when Redis is down.
Every `redis_client` test runs on fakeredis and on a real redis-server."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import fakeredis
import pytest
import redis
import redis.asyncio
from conftest import running_redis_server
from redis.crc import key_slot

from course_lib.clock import VirtualClock
from course_lib.events import LimitChecked, Recorder, StoreFallback
from course_lib.ratelimit import (
    AsyncRateLimiter,
    Decision,
    RateLimiter,
    ahit_all,
    hit_all,
)

ROOT = Path(__file__).resolve().parents[1]
CLOSED_PORT = 1  # nothing listens on port 1: connections are refused at once
names = (f"rl{i}" for i in itertools.count())
both = pytest.mark.parametrize("algorithm", ["sliding-log", "gcra"])


@both
def test_n_requests_in_one_window_admit_exactly_the_limit(redis_client: redis.Redis, algorithm: str) -> None:
    events = Recorder()
    limiter = RateLimiter(redis_client, limit=10, window=30, algorithm=algorithm, name=next(names), on_event=events)
    decisions = [limiter.hit("alice") for _ in range(25)]

    assert [d.allowed for d in decisions] == [True] * 10 + [False] * 15
    assert [d.remaining for d in decisions[:10]] == list(range(9, -1, -1))
    assert all(d.remaining == 0 and d.retry_after is not None for d in decisions[10:])
    assert {d.decided_by for d in decisions} == {"redis"}
    assert limiter.hit("bob").allowed  # another key has its own count
    checked = events.of(LimitChecked)
    assert [(e.key, e.allowed, e.remaining) for e in checked[9:11]] == [("alice", True, 0), ("alice", False, 0)]
    assert checked[10].retry_after == decisions[10].retry_after


def test_refused_requests_are_not_counted_so_a_fast_retrier_gets_in_when_the_window_frees(
        redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, limit=2, window=0.4, name=next(names))
    first = limiter.hit("u")
    time.sleep(0.2)
    assert limiter.hit("u").allowed and first.time is not None  # this one leaves the window 0.2 s after the first
    refused = 0
    while not (decision := limiter.hit("u")).allowed:  # a client retrying every 100 ms
        refused += 1
        assert refused < 20
        time.sleep(0.1)
    assert decision.time is not None and 0.4 <= decision.time - first.time < 0.4 + 0.1 + 0.15  # Redis's clock
    assert refused >= 2  # at 0.2 s and 0.3 s
    assert redis_client.zcard(limiter.keys("u")[0]) == 2  # the second and the latest: refused ones never recorded


def test_gcra_refused_requests_do_not_push_the_next_slot_back(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, limit=4, window=0.4, algorithm="gcra", name=next(names))
    burst = [limiter.hit("u") for _ in range(4)]
    assert all(d.allowed for d in burst)
    for _ in range(20):
        assert not limiter.hit("u").allowed  # hammering while refused costs nothing
    time.sleep(0.12)  # one emission interval (0.1 s) has passed
    assert limiter.hit("u").allowed
    assert not limiter.hit("u").allowed


def test_requests_in_the_same_microsecond_do_not_collide(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, limit=200, window=30, name=next(names))
    log_key = limiter.keys("u")[0]
    assert limiter.hit("u", cost=50).remaining == 150  # 50 members written in one script run
    scores = {score for _, score in redis_client.zrange(log_key, 0, -1, withscores=True)}
    assert redis_client.zcard(log_key) == 50 and len(scores) == 1  # one microsecond, fifty members

    pipe = redis_client.pipeline(transaction=False)
    for _ in range(50):
        limiter._script(keys=limiter.keys("u"), args=[200, 30_000_000, 1], client=pipe)
    assert [int(row.split()[0]) for row in pipe.execute()] == [1] * 50  # "allowed used ..." per decision
    assert redis_client.zcard(log_key) == 100


@both
def test_retry_after_is_whole_seconds_rounded_up(redis_client: redis.Redis, algorithm: str) -> None:
    slow = RateLimiter(redis_client, limit=1, window=2.5, algorithm=algorithm, name=next(names))
    quick = RateLimiter(redis_client, limit=1, window=0.3, algorithm=algorithm, name=next(names))
    assert slow.hit("u").retry_after is None
    refused = slow.hit("u")
    assert refused.retry_after == 3 and isinstance(refused.retry_after, int)  # 2.49... s -> 3
    assert refused.headers()["Retry-After"] == "3"
    quick.hit("u")
    assert quick.hit("u").retry_after == 1  # 0.29... s -> 1, never 0


def test_headers_are_the_exact_draft_fields() -> None:
    refused = Decision(allowed=False, limit=10, remaining=0, reset_after=41.2, retry_after=7, name="user", window=60)
    assert refused.headers() == {"RateLimit-Policy": '"user";q=10;w=60', "RateLimit": '"user";r=0;t=42',
                                 "Retry-After": "7"}
    allowed = Decision(allowed=True, limit=100, remaining=99, reset_after=0.5, retry_after=None, name="g", window=0.5)
    assert allowed.headers() == {"RateLimit-Policy": '"g";q=100;w=1', "RateLimit": '"g";r=99;t=1'}


def test_headers_of_a_real_decision(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, limit=3, window=60, name="per-user")
    assert limiter.hit("carol").headers() == {"RateLimit-Policy": '"per-user";q=3;w=60',
                                              "RateLimit": '"per-user";r=2;t=60'}


@both
def test_every_key_has_a_ttl_and_one_hash_tag(redis_client: redis.Redis, algorithm: str) -> None:
    limiter = RateLimiter(redis_client, limit=5, window=10, algorithm=algorithm, name="n")
    for _ in range(7):
        limiter.hit("dave")
    keys = sorted(k.decode() for k in redis_client.keys("*"))
    expected = ["{rl:n:dave}:log", "{rl:n:dave}:seq"] if algorithm == "sliding-log" else ["{rl:n:dave}:tat"]
    assert keys == expected
    assert all(0 < redis_client.pttl(k) <= 11_000 for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1


@both
def test_cost_counts_tokens_and_a_refused_cost_is_not_charged(redis_client: redis.Redis, algorithm: str) -> None:
    tokens = RateLimiter(redis_client, limit=1000, window=60, algorithm=algorithm, name=next(names))
    assert tokens.hit("u", cost=600).remaining == 400
    refused = tokens.hit("u", cost=500)
    assert not refused.allowed and refused.remaining == 400
    # GCRA frees 100 tokens in 6 s; the log waits for the 600-token request to leave the window
    assert refused.retry_after == (60 if algorithm == "sliding-log" else 6)
    assert tokens.hit("u", cost=400).remaining == 0
    with pytest.raises(ValueError, match=r"cost must be an integer from 1 to the limit \(1000\), got 1001"):
        tokens.hit("u", cost=1001)


@both
def test_composed_limits_give_back_what_a_later_refusal_would_leak(redis_client: redis.Redis, algorithm: str) -> None:
    per_user = RateLimiter(redis_client, limit=5, window=30, algorithm=algorithm, name=next(names))
    everyone = RateLimiter(redis_client, limit=2, window=30, algorithm=algorithm, name=next(names))
    results = [hit_all([(per_user, "erin", 1), (everyone, "all", 1)]) for _ in range(4)]
    assert [d.allowed for d in results] == [True, True, False, False]
    assert results[2].name == everyone.name  # the refusal says which limit refused
    assert per_user.hit("erin").remaining == 2  # 2 admitted + this one: the refused two were given back


def test_configuration_errors_name_the_field_and_the_limit() -> None:
    client = fakeredis.FakeRedis()
    cases = [
        ({"limit": 0, "window": 1}, "limit must be an integer from 1 to 10,000,000, got 0"),
        ({"limit": 5, "window": 0}, r"window must be from 0.001 to 31,536,000 seconds \(a year\), got 0"),
        ({"limit": 5, "window": 1, "algorithm": "fixed"},
         r"algorithm must be one of \('sliding-log', 'gcra'\), got 'fixed'"),
        ({"limit": 5, "window": 1, "on_redis_error": "local"},
         "local_limit must be an integer >= 1 when on_redis_error is 'local', got None"),
        ({"limit": 5, "window": 1, "name": "a{b}"}, "name must be 1-100 characters without quotes or braces"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            RateLimiter(client, **kwargs)
    with pytest.raises(ValueError, match="key must be a string of 1-200 characters, got ''"):
        RateLimiter(client, limit=1, window=1).hit("")
    with pytest.raises(TypeError, match="for a redis.asyncio client use AsyncRateLimiter"):
        RateLimiter(fakeredis.FakeAsyncRedis(), limit=1, window=1)


# --- Redis unreachable: the configured policy, an event, never an exception ------------------
def _dead_limiter(policy: str, **kwargs) -> tuple[RateLimiter, Recorder, VirtualClock]:
    clock, events = VirtualClock(), Recorder()
    limiter = RateLimiter(redis.Redis(host="127.0.0.1", port=CLOSED_PORT), limit=100, window=10, name="dead",
                          on_redis_error=policy, clock=clock, on_event=events, **kwargs)
    return limiter, events, clock


def test_redis_down_open_admits() -> None:
    limiter, events, _ = _dead_limiter("open")
    started = time.monotonic()
    decisions = [limiter.hit("u") for _ in range(5)]
    assert time.monotonic() - started < 0.5
    assert [(d.allowed, d.decided_by) for d in decisions] == [(True, "open")] * 5
    assert [e.operation for e in events.of(StoreFallback)] == ["hit"]  # then Redis is left alone for a while
    assert "ConnectionError" in events.of(StoreFallback)[0].error


def test_redis_down_closed_refuses_with_retry_after_one_second() -> None:
    limiter, events, _ = _dead_limiter("closed")
    decision = limiter.hit("u")
    assert (decision.allowed, decision.retry_after, decision.decided_by) == (False, 1, "closed")
    assert decision.headers()["Retry-After"] == "1"
    assert len(events.of(StoreFallback)) == 1


def test_redis_down_local_limits_per_process_and_asks_redis_again_later() -> None:
    limiter, events, clock = _dead_limiter("local", local_limit=2, store_retry_seconds=5)
    decisions = [limiter.hit("u") for _ in range(3)]
    assert [(d.allowed, d.decided_by, d.limit) for d in decisions] == [(True, "local", 2)] * 2 + [(False, "local", 2)]
    assert decisions[2].retry_after == 10
    clock.advance(10)
    assert limiter.hit("u").allowed  # the local window moved on; Redis was asked again (still down)
    assert [e.operation for e in events.of(StoreFallback)] == ["hit", "hit"]


def test_a_real_server_stopped_mid_run_switches_to_the_policy() -> None:
    events = Recorder()
    with running_redis_server() as (process, url):
        limiter = RateLimiter(redis.Redis.from_url(url), limit=3, window=30, name="stopping", on_event=events,
                              on_redis_error="local", local_limit=1)
        assert limiter.hit("u").decided_by == "redis"
        process.terminate()
        process.wait(timeout=10)
        after = [limiter.hit("u") for _ in range(2)]
    assert [(d.allowed, d.decided_by) for d in after] == [(True, "local"), (False, "local")]
    assert [e.operation for e in events.of(StoreFallback)] == ["hit"]
    assert len(events.of(LimitChecked)) == 3


# --- the async limiter (redis.asyncio) ---------------------------------------------------------
@both
async def test_async_limiter_is_exact_and_charges_cost(async_redis_factory, algorithm: str) -> None:
    client = async_redis_factory()
    try:
        limiter = AsyncRateLimiter(client, limit=10, window=30, algorithm=algorithm, name=next(names))
        decisions = [await limiter.hit("u") for _ in range(12)]
        assert [d.allowed for d in decisions] == [True] * 10 + [False] * 2
        tokens = AsyncRateLimiter(client, limit=100, window=30, algorithm=algorithm, name=next(names))
        assert (await tokens.hit("u", cost=70)).remaining == 30
        assert not (await tokens.hit("u", cost=40)).allowed
        assert (await tokens.hit("u", cost=30)).remaining == 0
        user = AsyncRateLimiter(client, limit=5, window=30, algorithm=algorithm, name=next(names))
        results = [(await ahit_all([(user, "u", 1), (limiter, "u", 1)])).allowed for _ in range(3)]
        assert results == [False] * 3
        assert (await user.hit("u")).remaining == 4  # nothing leaked into the per-user count
    finally:
        await client.aclose()


async def test_async_limiter_follows_the_policy_when_redis_is_down() -> None:
    events = Recorder()
    dead = redis.asyncio.Redis(host="127.0.0.1", port=CLOSED_PORT)
    try:
        limiter = AsyncRateLimiter(dead, limit=5, window=10, name="adead", on_redis_error="closed", on_event=events)
        decision = await limiter.hit("u")
        assert (decision.allowed, decision.retry_after, decision.decided_by) == (False, 1, "closed")
        assert [e.operation for e in events.of(StoreFallback)] == ["hit"]
    finally:
        await dead.aclose()
    with pytest.raises(TypeError, match="for a synchronous client use RateLimiter"):
        AsyncRateLimiter(fakeredis.FakeRedis(), limit=1, window=1)


# --- many OS processes against one real server ---------------------------------------------------
def test_soak_four_processes_never_admit_over_the_limit() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "soak_ratelimit.py"), "--requests", "3000"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["processes"] >= 4 and report["requests"] == 3000
    log, gcra = report["sliding-log"], report["gcra"]
    assert log["decisions"] == gcra["decisions"] == 3000
    assert log["over_limit_windows"] == 0 and log["wrongly_refused"] == 0
    assert log["max_in_any_window"] == report["limit"]  # contended enough to fill windows
    assert gcra["bound_violations"] == 0
    assert report["limit"] <= gcra["max_in_any_window"] < 2 * report["limit"]


@both
def test_time_source_clock_decides_on_the_virtual_clock(redis_client: redis.Redis, algorithm: str) -> None:
    clock = VirtualClock()
    limiter = RateLimiter(redis_client, limit=3, window=10, algorithm=algorithm, name=next(names), clock=clock,
                          time_source="clock")
    assert [limiter.hit("u").allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.hit("u")
    assert refused.time == clock.wall() and refused.retry_after == (10 if algorithm == "sliding-log" else 4)
    clock.sleep(10)  # virtual: Redis's own TIME has hardly moved, the decisions follow the clock
    assert limiter.hit("u").allowed and limiter.hit("u").time == clock.wall()


def test_time_source_clock_shows_why_production_keeps_redis_time(redis_client: redis.Redis) -> None:
    ahead, behind = VirtualClock(start=2), VirtualClock()  # two app servers, clocks 2 s apart
    servers = [RateLimiter(redis_client, limit=5, window=10, name="skew", clock=clock, time_source="clock")
               for clock in (behind, ahead)]
    admitted = sum(servers[0].hit("u").allowed for _ in range(5))
    behind.sleep(8.5), ahead.sleep(8.5)  # 8.5 s later for both; the fast one thinks the window has passed
    admitted += sum(servers[1].hit("u").allowed for _ in range(5))
    assert admitted == 10  # twice the limit within 8.5 s
    shared = [RateLimiter(redis_client, limit=5, window=10, name="one-clock", clock=behind) for _ in range(2)]
    assert sum(s.hit("u").allowed for s in shared for _ in range(5)) == 5  # Redis TIME: one clock


def test_time_source_is_checked() -> None:
    with pytest.raises(ValueError, match="time_source"):
        RateLimiter(fakeredis.FakeRedis(), limit=1, window=1, time_source="app")  # type: ignore[arg-type]


async def test_async_limiter_takes_time_from_the_clock_too() -> None:
    clock = VirtualClock()
    limiter = AsyncRateLimiter(fakeredis.FakeAsyncRedis(), limit=2, window=5, clock=clock, time_source="clock")
    assert [(await limiter.hit("u")).allowed for _ in range(3)] == [True, True, False]
    clock.sleep(5)
    decision = await limiter.hit("u")
    assert decision.allowed and decision.time == clock.wall()
