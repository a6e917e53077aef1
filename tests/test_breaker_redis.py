"""Redis-shared breaker state: same decisions as the local state, shared across processes,
and a local fallback when Redis is unreachable."""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import fakeredis
import openai
import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_lib.breaker import BreakerOpen, BreakerPolicy, CircuitBreaker
from course_lib.breaker_redis import AsyncRedisState, RedisState
from course_lib.clock import VirtualClock
from course_lib.events import Recorder, Rejected, StateChange, StoreFallback
from conftest import running_redis_server
from sdk_errors import status_error

ERRORS = {"success": None, "failure": status_error(503), "ignored": status_error(400)}
names = (f"b{i}" for i in itertools.count())

policies = st.builds(
    lambda trip_on, threshold, window, size, rate, probes, to_close, open_seconds, probe_timeout: BreakerPolicy(
        trip_on=trip_on, failure_threshold=threshold, window=window, window_size=size, minimum_calls=min(threshold, size),
        failure_rate=rate, half_open_probes=probes, probes_to_close=to_close, open_seconds=open_seconds, probe_timeout=probe_timeout,
    ),
    st.sampled_from(["consecutive", "rate"]), st.integers(1, 5), st.sampled_from(["count", "time"]), st.integers(2, 8),
    st.sampled_from([0.25, 0.5, 0.55, 1.0]), st.integers(1, 2), st.integers(1, 2), st.sampled_from([0.0, 0.3, 2.0, 5.0]),
    st.sampled_from([0.7, 4.0, 60.0]),
)
operations = st.lists(
    st.one_of(
        st.just(("admit",)),
        st.tuples(st.just("finish"), st.integers(0, 50), st.sampled_from(list(ERRORS))),
        st.tuples(st.just("advance"), st.sampled_from([0.1, 0.5, 1.0, 3.0])),  # 0.1: float drift in the times
    ),
    max_size=60,
)


def replay(breaker: CircuitBreaker, clock: VirtualClock, steps: list[tuple]) -> list[object]:
    """Apply the steps; return what a caller observes (admissions, rejections, states)."""
    seen: list[object] = []
    tickets: list[tuple] = []
    for step in steps:
        if step[0] == "admit":
            try:
                tickets.append(breaker.admit())
                seen.append("admitted")
            except BreakerOpen as rejected:
                seen.append(("rejected", rejected.state, round(rejected.retry_in, 6)))
        elif step[0] == "finish" and tickets:
            breaker.settle(tickets.pop(step[1] % len(tickets)), ERRORS[step[2]])
        elif step[0] == "advance":
            clock.advance(step[1])
        seen.append(breaker.state)
    return seen


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=policies, steps=operations)
def test_redis_state_decides_exactly_like_local_state(redis_client: redis.Redis, policy: BreakerPolicy, steps: list[tuple]) -> None:
    local_clock, shared_clock = VirtualClock(), VirtualClock()
    local_events, shared_events = Recorder(), Recorder()
    local = CircuitBreaker(policy, clock=local_clock, on_event=local_events)
    shared = CircuitBreaker(policy, clock=shared_clock, on_event=shared_events,
                            state=RedisState(redis_client, next(names), policy, clock=shared_clock))

    assert replay(shared, shared_clock, steps) == replay(local, local_clock, steps)
    assert [(e.t, e.old, e.new, e.reason) for e in shared_events.of(StateChange)] == [
        (e.t, e.old, e.new, e.reason) for e in local_events.of(StateChange)
    ]


def test_a_trip_seen_by_one_process_is_obeyed_by_another(redis_server_url: str) -> None:
    """Two real processes, one real redis-server, Redis's own clock."""
    script = textwrap.dedent(
        """
        import sys, redis
        from course_lib.breaker import BreakerOpen, BreakerPolicy, CircuitBreaker
        from course_lib.breaker_redis import AsyncRedisState, RedisState
        policy = BreakerPolicy(failure_threshold=5, open_seconds=60)
        client = redis.Redis.from_url(sys.argv[1])
        breaker = CircuitBreaker(policy, name="gpt-4o", state=RedisState(client, "gpt-4o-shared", policy))
        def down():
            raise TimeoutError("provider down")
        def up():
            return "answered"
        if sys.argv[2] == "trip":
            for _ in range(5):
                try:
                    breaker.call(down)
                except TimeoutError:
                    pass
            print(breaker.state)
        else:
            try:
                print(breaker.call(up))
            except BreakerOpen as rejected:
                print("rejected", rejected.state, rejected.retry_in > 50)
        """
    )
    RedisState(redis.Redis.from_url(redis_server_url), "gpt-4o-shared", BreakerPolicy()).reset()

    def run(role: str) -> str:
        done = subprocess.run([sys.executable, "-c", script, redis_server_url, role], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run("call") == "answered"  # closed: the second process gets through
    assert run("trip") == "open"
    assert run("call") == "rejected open True"  # a different process fails fast


def test_an_unreachable_redis_falls_back_to_a_local_decision(caplog: pytest.LogCaptureFixture) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))  # nothing listens on port 1
    clock, events = VirtualClock(), Recorder()
    policy = BreakerPolicy(failure_threshold=2, open_seconds=10)
    breaker = CircuitBreaker(policy, clock=clock, on_event=events,
                             state=RedisState(dead, "offline", policy, clock=clock, on_event=events))

    assert breaker.call(lambda: "still served") == "still served"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            breaker.call(_raise, ERRORS["failure"])
    with pytest.raises(BreakerOpen):  # the local fallback keeps protecting the provider
        breaker.call(lambda: "not called")
    assert {e.operation for e in events.of(StoreFallback)} == {"admit"}
    assert "Redis admit failed" in caplog.text and "deciding locally" in caplog.text


def test_redis_failing_mid_call_still_returns_the_result(caplog: pytest.LogCaptureFixture) -> None:
    server = fakeredis.FakeServer()
    clock, events = VirtualClock(), Recorder()
    policy = BreakerPolicy()
    breaker = CircuitBreaker(policy, clock=clock, on_event=events,
                             state=RedisState(fakeredis.FakeRedis(server=server), "flaky", policy, clock=clock, on_event=events))

    def call_during_which_redis_dies() -> str:
        server.connected = False
        return "answer"

    assert breaker.call(call_during_which_redis_dies) == "answer"
    assert [e.operation for e in events.of(StoreFallback)] == ["settle"]


def _raise(error: Exception) -> None:
    raise error


def test_a_probe_whose_outcome_never_reached_redis_does_not_wedge_the_breaker(redis_client: redis.Redis) -> None:
    clock = VirtualClock()
    policy = BreakerPolicy(failure_threshold=1, open_seconds=5, probe_timeout=30)
    state = RedisState(redis_client, next(names), policy, clock=clock)
    breaker = CircuitBreaker(policy, clock=clock, state=state)
    with pytest.raises(openai.InternalServerError):
        breaker.call(_raise, ERRORS["failure"])
    clock.advance(5)
    real_settle = state._settle
    state._settle = _unreachable  # Redis blips while the probe's outcome is being recorded
    assert breaker.call(lambda: "probe ok") == "probe ok"
    state._settle = real_settle
    clock.advance(state.store_retry_seconds)  # the failed settle made the state decide locally for a while
    with pytest.raises(BreakerOpen, match="probe calls already in flight"):
        breaker.call(lambda: "refused")  # the lost probe still holds the slot...
    clock.advance(30)
    assert breaker.call(lambda: "served") == "served"  # ...until its lease runs out
    assert breaker.state == "closed"


def _unreachable(*args, **kwargs):
    raise redis.ConnectionError("Redis went away")


def test_async_clients_are_refused_with_the_reason() -> None:
    with pytest.raises(TypeError, match="for a redis.asyncio client use AsyncRedisState"):
        RedisState(fakeredis.FakeAsyncRedis(), "b", BreakerPolicy())


def test_the_states_policy_must_be_the_breakers() -> None:
    state = RedisState(fakeredis.FakeRedis(), "b", BreakerPolicy(failure_threshold=3))
    with pytest.raises(ValueError, match="state.policy must equal the breaker's policy"):
        CircuitBreaker(BreakerPolicy(failure_threshold=5), state=state)


# --- the async state (redis.asyncio clients) ----------------------------------------------
async def replay_async(breaker: CircuitBreaker, clock: VirtualClock, steps: list[tuple]) -> list[object]:
    """`replay`, through the awaited entry points."""
    seen: list[object] = []
    tickets: list[tuple] = []
    for step in steps:
        if step[0] == "admit":
            try:
                tickets.append(await breaker.aadmit())
                seen.append("admitted")
            except BreakerOpen as rejected:
                seen.append(("rejected", rejected.state, round(rejected.retry_in, 6)))
        elif step[0] == "finish" and tickets:
            await breaker.asettle(tickets.pop(step[1] % len(tickets)), ERRORS[step[2]])
        elif step[0] == "advance":
            clock.advance(step[1])
        seen.append(await breaker.astate())
    return seen


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=policies, steps=operations)
def test_async_redis_state_decides_exactly_like_local_state(async_redis_factory, policy: BreakerPolicy, steps: list[tuple]) -> None:
    local_clock = VirtualClock()
    expected = replay(CircuitBreaker(policy, clock=local_clock), local_clock, steps)

    async def shared() -> list[object]:
        client, clock = async_redis_factory(), VirtualClock()
        try:
            state = AsyncRedisState(client, next(names), policy, clock=clock)
            return await replay_async(CircuitBreaker(policy, clock=clock, state=state), clock, steps)
        finally:
            await client.aclose()

    assert asyncio.run(shared()) == expected


async def test_an_async_shared_breaker_guards_the_async_sdk() -> None:
    from course_lib.llm import make_async_client
    from course_lib.sim import SimProvider

    clock, events = VirtualClock(), Recorder()
    policy = BreakerPolicy(failure_threshold=2, open_seconds=30)
    client = fakeredis.FakeAsyncRedis()
    worker_a = CircuitBreaker(policy, clock=clock, state=AsyncRedisState(client, "gpt-4o", policy, clock=clock))
    worker_b = CircuitBreaker(policy, clock=clock, on_event=events, state=AsyncRedisState(client, "gpt-4o", policy, clock=clock))
    provider = SimProvider({"faults": [{"kind": "outage"}]}, clock=clock)
    sdk = make_async_client(provider)
    hello = [{"role": "user", "content": "hi"}]

    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await worker_a.call(sdk.chat.completions.create, model="gpt-4o", messages=hello)
    with pytest.raises(BreakerOpen):
        await worker_b.call(sdk.chat.completions.create, model="gpt-4o", messages=hello)
    assert provider.calls() == 2
    assert await worker_b.astate() == "open"
    assert events.of(Rejected)[0].retry_at == 30
    with pytest.raises(TypeError, match="async store"):
        worker_b.call(lambda: "a sync call cannot be admitted without awaiting Redis")


async def test_async_state_falls_back_locally_when_redis_fails() -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    clock, events = VirtualClock(), Recorder()
    policy = BreakerPolicy(failure_threshold=1, open_seconds=10)
    breaker = CircuitBreaker(policy, clock=clock, state=AsyncRedisState(fakeredis.FakeAsyncRedis(server=server), "down", policy,
                                                                          clock=clock, on_event=events))

    async def fails() -> None:
        raise TimeoutError("provider down")

    with pytest.raises(TimeoutError):
        await breaker.call(fails)
    with pytest.raises(BreakerOpen):
        await breaker.call(fails)
    assert [e.operation for e in events.of(StoreFallback)] == ["admit"]  # the second call did not ask Redis


def test_each_state_refuses_the_other_kind_of_client() -> None:
    with pytest.raises(TypeError, match="for a synchronous client use RedisState"):
        AsyncRedisState(fakeredis.FakeRedis(), "b", BreakerPolicy())


# --- a Redis outage must not slow down the calls the breaker guards -------------------------
# The clients below use redis-py's defaults (5 s socket timeouts, retries with backoff), as the
# README's plain `redis.Redis(...)` does: the state must bound its own calls whatever the client.
CLOSED_PORT = 1  # nothing listens on port 1: connections are refused at once


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every command any Redis client sends from now on (sync or async, real or fake)."""
    commands: list[str] = []
    sync_execute, async_execute = redis.Redis.execute_command, redis.asyncio.Redis.execute_command

    def execute(self, *args, **options):
        commands.append(str(args[0]))
        return sync_execute(self, *args, **options)

    async def aexecute(self, *args, **options):
        commands.append(str(args[0]))
        return await async_execute(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", execute)
    monkeypatch.setattr(redis.asyncio.Redis, "execute_command", aexecute)
    return commands


@pytest.fixture
def own_redis_server() -> Iterator[tuple[subprocess.Popen, str]]:
    """A redis-server for this test alone, which it may freeze with SIGSTOP (the session-wide one
    must stay usable)."""
    with running_redis_server() as server:
        yield server


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "course_lib.breaker" and r.levelno == logging.WARNING]


def test_a_dead_redis_costs_one_quick_failure_then_is_left_alone_for_a_while(
        sent: list[str], caplog: pytest.LogCaptureFixture) -> None:
    clock, events = VirtualClock(), Recorder()
    policy = BreakerPolicy()
    state = RedisState(redis.Redis(host="127.0.0.1", port=CLOSED_PORT), "dead", policy, on_event=events)
    breaker = CircuitBreaker(policy, clock=clock, state=state)

    started = time.monotonic()
    assert breaker.call(lambda: "served") == "served"
    assert time.monotonic() - started < 0.5  # redis-py's own retries and backoff took 3-4.5 s
    asked = len(sent)
    assert asked >= 1

    started = time.monotonic()
    for _ in range(20):  # the quiet period, on the breaker's clock
        assert breaker.call(lambda: "served") == "served"
        clock.advance(state.store_retry_seconds / 25)
    assert breaker.state == "closed"
    assert len(sent) == asked  # Redis was not asked at all
    assert time.monotonic() - started < 0.5
    assert [e.operation for e in events.of(StoreFallback)] == ["admit"]
    assert len(_warnings(caplog)) == 1

    clock.advance(state.store_retry_seconds)
    assert breaker.call(lambda: "served") == "served"
    assert len(sent) > asked  # time is up: Redis is asked again...
    assert [e.operation for e in events.of(StoreFallback)] == ["admit", "admit"]
    assert len(_warnings(caplog)) == 1  # ...and still failing is not news for the log


def test_tickets_are_settled_where_they_were_admitted_across_an_outage(
        sent: list[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="course_lib.breaker")
    server, clock = fakeredis.FakeServer(), VirtualClock()
    policy = BreakerPolicy(failure_threshold=1, open_seconds=60)
    state = RedisState(fakeredis.FakeRedis(server=server), "flaky", policy, clock=clock, store_retry_seconds=5)
    breaker = CircuitBreaker(policy, clock=clock, state=state)
    other_worker = CircuitBreaker(policy, clock=clock, state=RedisState(fakeredis.FakeRedis(server=server), "flaky", policy, clock=clock))

    shared_ticket = breaker.admit()  # Redis answers: a shared ticket
    server.connected = False
    local_ticket = breaker.admit()  # Redis fails: decided locally
    asked = len(sent)
    breaker.settle(shared_ticket, ERRORS["failure"])  # Redis is down: the outcome is dropped, not sent
    assert len(sent) == asked
    assert breaker.state == "closed"  # and not counted locally either (threshold 1)

    server.connected = True
    clock.advance(4.9)
    assert breaker.call(lambda: "local") == "local"
    assert len(sent) == asked  # still the quiet period, although Redis is back
    clock.advance(0.1)
    breaker.settle(local_ticket, ERRORS["failure"])  # a local ticket is settled locally...
    assert len(sent) == asked
    assert state.fallback.current(clock.now()) == "open"  # ...and trips the local breaker only
    assert not any("answers again" in r.getMessage() for r in caplog.records)

    assert breaker.state == "closed"  # the shared state decides again
    assert len(sent) > asked
    assert [r.levelname for r in caplog.records if "answers again" in r.getMessage()] == ["INFO"]
    with pytest.raises(openai.InternalServerError):
        other_worker.call(_raise, ERRORS["failure"])
    with pytest.raises(BreakerOpen):  # another worker's trip is obeyed
        breaker.call(lambda: "refused")
    assert len(_warnings(caplog)) == 1  # one outage, one warning


def test_a_frozen_redis_costs_one_short_timeout_then_is_left_alone_for_a_while(
        own_redis_server: tuple[subprocess.Popen, str], sent: list[str]) -> None:
    process, url = own_redis_server
    clock, events = VirtualClock(), Recorder()
    policy = BreakerPolicy(failure_threshold=2, open_seconds=60)
    state = RedisState(redis.Redis.from_url(url), "frozen", policy, on_event=events)
    breaker = CircuitBreaker(policy, clock=clock, state=state)
    assert breaker.call(lambda: "shared") == "shared"  # the state now holds a connection

    process.send_signal(signal.SIGSTOP)  # TCP still accepted by the kernel, nothing answers
    started = time.monotonic()
    assert breaker.call(lambda: "served") == "served"  # a read on the pooled connection
    assert time.monotonic() - started < 1.5  # redis-py's defaults: 5 s here, ~58 s on a new connection
    fresh = CircuitBreaker(policy, clock=clock, state=RedisState(redis.Redis.from_url(url), "frozen", policy))
    started = time.monotonic()
    assert fresh.call(lambda: "served") == "served"  # a new connection: accepted, never greeted
    assert time.monotonic() - started < 1.5

    asked = len(sent)
    started = time.monotonic()
    for _ in range(20):
        assert breaker.call(lambda: "served") == "served"
    assert time.monotonic() - started < 0.5 and len(sent) == asked
    assert [e.operation for e in events.of(StoreFallback)] == ["admit"]

    process.send_signal(signal.SIGCONT)
    other_worker = CircuitBreaker(policy, clock=clock, state=RedisState(redis.Redis.from_url(url), "frozen", policy))
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            other_worker.call(_raise, ERRORS["failure"])
    assert breaker.call(lambda: "served") == "served"  # still deciding locally...
    clock.advance(state.store_retry_seconds)
    with pytest.raises(BreakerOpen):  # ...until the quiet period ends: the shared breaker is open
        breaker.call(lambda: "refused")


async def test_a_dead_redis_costs_an_async_breaker_one_quick_failure_then_nothing_for_a_while(
        sent: list[str], caplog: pytest.LogCaptureFixture) -> None:
    clock, events = VirtualClock(), Recorder()
    policy = BreakerPolicy()
    client = redis.asyncio.Redis(host="127.0.0.1", port=CLOSED_PORT)
    state = AsyncRedisState(client, "dead", policy, on_event=events)
    breaker = CircuitBreaker(policy, clock=clock, state=state)

    async def answer() -> str:
        return "served"

    try:
        started = time.monotonic()
        assert await breaker.call(answer) == "served"
        assert time.monotonic() - started < 0.5
        asked = len(sent)
        for _ in range(20):
            assert await breaker.call(answer) == "served"
            clock.advance(state.store_retry_seconds / 25)
        assert await breaker.astate() == "closed"
        assert len(sent) == asked
        assert len(events.of(StoreFallback)) == 1 and len(_warnings(caplog)) == 1
        clock.advance(state.store_retry_seconds)
        assert await breaker.call(answer) == "served"
        assert len(sent) > asked and len(events.of(StoreFallback)) == 2
    finally:
        await client.aclose()


async def test_a_frozen_redis_costs_an_async_breaker_one_short_timeout(
        own_redis_server: tuple[subprocess.Popen, str], sent: list[str]) -> None:
    process, url = own_redis_server
    clock, events = VirtualClock(), Recorder()
    policy = BreakerPolicy(failure_threshold=2, open_seconds=60)
    clients = [redis.asyncio.Redis.from_url(url) for _ in range(3)]
    state = AsyncRedisState(clients[0], "frozen", policy, on_event=events)
    breaker = CircuitBreaker(policy, clock=clock, state=state)

    async def answer() -> str:
        return "served"

    async def down() -> None:
        raise TimeoutError("provider down")

    try:
        assert await breaker.call(answer) == "served"
        process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        assert await breaker.call(answer) == "served"
        assert time.monotonic() - started < 1.5
        fresh = CircuitBreaker(policy, clock=clock, state=AsyncRedisState(clients[1], "frozen", policy))
        started = time.monotonic()
        assert await fresh.call(answer) == "served"
        assert time.monotonic() - started < 1.5

        asked = len(sent)
        started = time.monotonic()
        for _ in range(20):
            assert await breaker.call(answer) == "served"
        assert time.monotonic() - started < 0.5 and len(sent) == asked
        assert [e.operation for e in events.of(StoreFallback)] == ["admit"]

        process.send_signal(signal.SIGCONT)
        other_worker = CircuitBreaker(policy, clock=clock, state=AsyncRedisState(clients[2], "frozen", policy))
        for _ in range(2):
            with pytest.raises(TimeoutError):
                await other_worker.call(down)
        assert await breaker.call(answer) == "served"
        clock.advance(state.store_retry_seconds)
        with pytest.raises(BreakerOpen):
            await breaker.call(answer)
    finally:
        for client in clients:
            await client.aclose()


def test_the_state_leaves_the_callers_client_as_it_was() -> None:
    client = redis.Redis(host="127.0.0.1", port=CLOSED_PORT)
    settings_before = dict(client.connection_pool.connection_kwargs)
    RedisState(client, "b", BreakerPolicy(), timeout=0.1)
    assert client.connection_pool.connection_kwargs == settings_before


def test_a_pool_the_state_cannot_copy_is_refused_unless_timeout_is_none() -> None:
    class CustomPool(redis.ConnectionPool):
        pass

    client = redis.Redis(connection_pool=CustomPool(host="127.0.0.1", port=CLOSED_PORT))
    with pytest.raises(TypeError, match=r"CustomPool.*socket_timeout.*timeout=None"):
        RedisState(client, "b", BreakerPolicy())
    assert RedisState(client, "b", BreakerPolicy(), timeout=None).redis is client  # used as given: its settings rule


@pytest.mark.parametrize("setting", [{"timeout": 0}, {"timeout": -1.0}, {"store_retry_seconds": -1}, {"store_retry_seconds": float("nan")}])
def test_outage_settings_are_checked(setting: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(setting))):
        RedisState(fakeredis.FakeRedis(), "b", BreakerPolicy(), **setting)
    with pytest.raises(ValueError, match=next(iter(setting))):
        AsyncRedisState(fakeredis.FakeAsyncRedis(), "b", BreakerPolicy(), **setting)
