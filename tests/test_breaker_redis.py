"""Redis-shared breaker state: same decisions as the local state, shared across processes,
and a local fallback when Redis is unreachable."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap

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


@pytest.fixture(params=["fakeredis", "redis-server"])
def async_redis_factory(request: pytest.FixtureRequest):
    """Makes a redis.asyncio client inside the running event loop (clients belong to one loop)."""
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()
        return lambda: fakeredis.FakeAsyncRedis(server=server)
    url = request.getfixturevalue("redis_server_url")
    return lambda: redis.asyncio.Redis.from_url(url)


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
    assert [e.operation for e in events.of(StoreFallback)] == ["admit", "admit"]


def test_each_state_refuses_the_other_kind_of_client() -> None:
    with pytest.raises(TypeError, match="for a synchronous client use RedisState"):
        AsyncRedisState(fakeredis.FakeRedis(), "b", BreakerPolicy())
