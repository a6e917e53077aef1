"""course_lib.fallback: which failures fall through, which propagate, and who answered."""

from __future__ import annotations

import openai
import pytest

from course_lib.breaker import BreakerPolicy, CircuitBreaker
from course_lib.clock import VirtualClock
from course_lib.events import FallbackStep, Recorder
from course_lib.fallback import Answer, FallbackChain, FallbackExhausted, Handler, NoAnswer
from course_lib.retry import Retrier, RetryPolicy
from sdk_errors import connection_error, status_error, timeout_error


class Model:
    """A fake model handler: raises the scripted errors in order, then answers; counts calls."""

    def __init__(self, name: str, *errors: BaseException) -> None:
        self.name, self.errors, self.calls = name, list(errors), 0

    def __call__(self, prompt: str) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return f"{self.name}: {prompt}"


def static(prompt: str) -> str:
    return "We're busy right now; please try again shortly."


def chain_of(*handlers: Handler, events: Recorder | None = None) -> FallbackChain:
    return FallbackChain(handlers, clock=VirtualClock(), on_event=events)


@pytest.mark.parametrize("error", [status_error(503), status_error(500), status_error(429), timeout_error(), connection_error(),
                                   status_error(429, code="insufficient_quota")])
def test_provider_failures_fall_through_to_the_next_model(error: Exception) -> None:
    big, small = Model("gpt-4o", error), Model("gpt-4o-mini")
    answer = chain_of(Handler("gpt-4o", big), Handler("gpt-4o-mini", small)).call("hi")
    assert answer == Answer("gpt-4o-mini: hi", "gpt-4o-mini", False, (("gpt-4o", "failed", type(error).__name__), ("gpt-4o-mini", "answered", "")))


def test_both_models_down_served_by_cache_then_static_and_marked_degraded() -> None:
    cache: dict[str, str] = {"known question": "cached answer"}

    def cached(prompt: str) -> str:
        if prompt not in cache:
            raise NoAnswer("cache miss")
        return cache[prompt]

    def handlers() -> list[Handler]:
        return [Handler("gpt-4o", Model("gpt-4o", status_error(503))), Handler("gpt-4o-mini", Model("gpt-4o-mini", status_error(502))),
                Handler("cache", cached, degraded=True), Handler("static", static, degraded=True)]

    hit = FallbackChain(handlers()).call("known question")
    miss = FallbackChain(handlers()).call("new question")
    assert (hit.value, hit.handler, hit.degraded) == ("cached answer", "cache", True)
    assert (miss.handler, miss.degraded) == ("static", True)
    assert [step[:2] for step in miss.trail] == [("gpt-4o", "failed"), ("gpt-4o-mini", "failed"), ("cache", "skipped"), ("static", "answered")]


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_do_not_fall_through(status: int) -> None:
    small = Model("gpt-4o-mini")
    with pytest.raises(openai.APIStatusError) as raised:
        chain_of(Handler("gpt-4o", Model("gpt-4o", status_error(status))), Handler("gpt-4o-mini", small)).call("hi")
    assert raised.value.status_code == status
    assert small.calls == 0  # the same request would fail on every model


def test_context_length_moves_to_a_handler_with_a_larger_window() -> None:
    events = Recorder()
    too_long = status_error(400, code="context_length_exceeded")
    chain = chain_of(
        Handler("gpt-4o", Model("gpt-4o", too_long), context_window=128_000),
        Handler("gpt-4o-mini", mini := Model("gpt-4o-mini"), context_window=128_000),
        Handler("gpt-4.1", Model("gpt-4.1"), context_window=1_047_576),
        events=events,
    )
    answer = chain.call("a very long prompt")
    assert answer.handler == "gpt-4.1"
    assert mini.calls == 0  # same window: it would fail the same way
    assert [(e.handler, e.outcome, e.detail) for e in events.of(FallbackStep)] == [
        ("gpt-4o", "failed", "context_length_exceeded"),
        ("gpt-4o-mini", "skipped", "context window 128000 <= 128000"),
        ("gpt-4.1", "answered", ""),
    ]


def test_a_handler_without_a_window_does_not_make_the_chain_forget_the_prompt_size() -> None:
    too_long = status_error(400, code="context_length_exceeded")
    mini = Model("gpt-4o-mini")
    chain = chain_of(
        Handler("gpt-4o", Model("gpt-4o", too_long), context_window=128_000),
        Handler("custom", Model("custom", status_error(400, code="context_length_exceeded"))),  # window unknown
        Handler("gpt-4o-mini", mini, context_window=128_000),
        Handler("gpt-4.1", Model("gpt-4.1"), context_window=1_047_576),
    )
    answer = chain.call("a very long prompt")
    assert answer.handler == "gpt-4.1"
    assert mini.calls == 0  # known since gpt-4o to be too small
    assert [step[:2] for step in answer.trail] == [
        ("gpt-4o", "failed"), ("custom", "failed"), ("gpt-4o-mini", "skipped"), ("gpt-4.1", "answered")]


def test_context_length_with_no_larger_model_reaches_the_static_handler() -> None:
    chain = chain_of(Handler("gpt-4o", Model("gpt-4o", status_error(400, code="context_length_exceeded")), context_window=128_000),
                     Handler("static", static, degraded=True))
    assert chain.call("long").handler == "static"


@pytest.mark.parametrize("bug", [TypeError("unexpected keyword"), KeyError("choices"), AttributeError("none")])
def test_programming_errors_propagate(bug: Exception) -> None:
    static_calls = []
    chain = chain_of(Handler("gpt-4o", Model("gpt-4o", bug)), Handler("static", lambda p: static_calls.append(p) or "sorry", degraded=True))
    with pytest.raises(type(bug)):
        chain.call("hi")
    assert static_calls == []


def test_every_handler_failing_raises_with_each_error() -> None:
    with pytest.raises(FallbackExhausted) as exhausted:
        chain_of(Handler("a", Model("a", status_error(503))), Handler("b", Model("b", timeout_error()))).call("hi")
    assert [(name, type(e).__name__) for name, e in exhausted.value.errors] == [("a", "InternalServerError"), ("b", "APITimeoutError")]
    assert "all 2 handlers failed" in str(exhausted.value)


def test_an_open_breaker_is_skipped_without_a_call() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=2, open_seconds=60), clock=clock)
    big = Model("gpt-4o", *[status_error(503)] * 10)
    chain = FallbackChain([Handler("gpt-4o", big, breaker=breaker), Handler("gpt-4o-mini", Model("gpt-4o-mini"))], clock=clock)

    answers = [chain.call(f"q{i}") for i in range(5)]
    assert big.calls == 2  # after two failures the breaker opens; the rest skip gpt-4o entirely
    assert [a.trail[0][1:] for a in answers] == [("failed", "InternalServerError")] * 2 + [("skipped", "breaker open")] * 3
    assert {a.handler for a in answers} == {"gpt-4o-mini"}


def test_retry_runs_inside_the_breaker() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=2, open_seconds=60), clock=clock)
    retrier = Retrier(RetryPolicy(max_attempts=3, base_delay=1, jitter="none"), clock=clock)
    big = Model("gpt-4o", *[status_error(503)] * 100)
    chain = FallbackChain([Handler("gpt-4o", big, breaker=breaker, retrier=retrier), Handler("static", static, degraded=True)], clock=clock)

    for _ in range(4):
        chain.call("hi")
    # two retried calls (3 attempts each) open the breaker; later requests spend no attempts
    assert big.calls == 6
    assert breaker.state == "open"


async def test_async_chain_mixes_async_models_and_sync_fallbacks() -> None:
    clock = VirtualClock()
    events = Recorder()

    async def gpt_4o(prompt: str) -> str:
        await clock.asleep(2)
        raise status_error(503)

    async def gpt_4o_mini(prompt: str) -> str:
        await clock.asleep(0.5)
        return f"mini: {prompt}"

    chain = FallbackChain([Handler("gpt-4o", gpt_4o), Handler("gpt-4o-mini", gpt_4o_mini), Handler("static", static, degraded=True)],
                          clock=clock, on_event=events)
    answer = await chain.acall("hi")
    assert (answer.value, answer.handler, answer.degraded) == ("mini: hi", "gpt-4o-mini", False)
    assert [(e.handler, e.outcome, e.t, e.duration) for e in events.of(FallbackStep)] == [
        ("gpt-4o", "failed", 0, 2), ("gpt-4o-mini", "answered", 2, 0.5)]


async def test_async_chain_applies_the_same_rules() -> None:
    async def bad_request(prompt: str) -> str:
        raise status_error(400)

    async def too_long(prompt: str) -> str:
        raise status_error(400, code="context_length_exceeded")

    async def bug(prompt: str) -> str:
        raise TypeError("bug")

    with pytest.raises(openai.BadRequestError):
        await FallbackChain([Handler("a", bad_request), Handler("s", static)]).acall("x")
    with pytest.raises(TypeError):
        await FallbackChain([Handler("a", bug), Handler("s", static)]).acall("x")
    answer = await FallbackChain([Handler("a", too_long, context_window=8), Handler("b", too_long, context_window=8),
                                  Handler("s", static, degraded=True)]).acall("x")
    assert [step[:2] for step in answer.trail] == [("a", "failed"), ("b", "skipped"), ("s", "answered")]


def test_the_sync_entry_point_refuses_async_handlers() -> None:
    async def model(prompt: str) -> str:
        return prompt

    with pytest.raises(TypeError, match="use `await chain.acall"):
        FallbackChain([Handler("m", model)]).call("x")


def test_bad_configuration_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="at least one handler"):
        FallbackChain([])
    with pytest.raises(ValueError, match="unique"):
        FallbackChain([Handler("a", static), Handler("a", static)])
    with pytest.raises(TypeError, match="fn must be callable"):
        Handler("a", "not a function")  # type: ignore[arg-type]
