"""course_lib.retry: what is retried, how long it waits, and when it stops (virtual clock)."""

from __future__ import annotations

import asyncio
import inspect
import random

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from course_lib.clock import VirtualClock
from course_lib.events import Attempt, GiveUp, Recorder, Wait
from course_lib.retry import (
    JITTERS,
    RetryBudget,
    Retrier,
    RetryPolicy,
    is_transient,
    retry,
    retry_after_seconds,
)
from sdk_errors import REQUEST, status_error


class Script:
    """A callable that raises the scripted errors in order, then returns "ok"; counts calls."""

    def __init__(self, *errors: BaseException, clock: VirtualClock | None = None) -> None:
        self.errors = list(errors)
        self.calls: list[float] = []
        self.clock = clock

    def __call__(self) -> str:
        self.calls.append(self.clock.now() if self.clock else 0.0)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def make(policy: RetryPolicy, clock: VirtualClock, **options) -> tuple[Retrier, Recorder]:
    recorder = Recorder()
    return Retrier(policy, clock=clock, on_event=recorder, seed=7, **options), recorder


# --- policy ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("base_delay", -1.0),
        ("max_delay", 0.1),  # below the default base_delay of 0.5
        ("deadline", 0),
        ("jitter", "random"),
        ("max_retry_after", -5.0),
    ],
)
def test_invalid_policy_names_the_field_and_the_limit(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be .*, got {value!r}$"):
        RetryPolicy(**{field: value})


@given(
    jitter=st.sampled_from(JITTERS),
    retry_number=st.integers(1, 80),
    base=st.floats(0.01, 5),
    cap_factor=st.floats(1, 100),
    previous=st.floats(0.01, 500),
    seed=st.integers(0, 2**32),
)
def test_backoff_stays_within_each_strategys_bounds(jitter, retry_number, base, cap_factor, previous, seed) -> None:
    policy = RetryPolicy(base_delay=base, max_delay=base * cap_factor, jitter=jitter)
    delay = policy.backoff(retry_number, previous, random.Random(seed))
    ceiling = min(policy.max_delay, base * 2.0 ** (retry_number - 1))
    if jitter == "none":
        assert delay == ceiling
    elif jitter == "full":
        assert 0 <= delay <= ceiling
    elif jitter == "equal":
        assert ceiling / 2 <= delay <= ceiling
    else:
        assert min(base, policy.max_delay) <= delay <= min(policy.max_delay, max(base, 3 * previous))


# --- classification --------------------------------------------------------------------------
@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retryable(status: int) -> None:
    assert is_transient(status_error(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retryable(status: int) -> None:
    assert not is_transient(status_error(status))


def test_exhausted_quota_is_a_429_that_is_not_retryable() -> None:
    assert not is_transient(status_error(429, code="insufficient_quota"))


def test_connection_errors_and_timeouts_are_retryable_and_bugs_are_not() -> None:
    assert is_transient(openai.APIConnectionError(request=REQUEST))
    assert is_transient(openai.APITimeoutError(request=REQUEST))
    assert is_transient(TimeoutError())
    assert not is_transient(TypeError("bug"))
    assert not is_transient(ValueError("bad input"))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "2500"}, 2.5),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),  # the finer one wins
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_from_either_header(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(status_error(429, headers=headers)) == expected


@pytest.mark.parametrize("date", ["Wed, 21 Oct 2015 07:28:00 GMT", "Sun Nov  6 08:49:37 1994", "Wed, 21 Oct 2015 07:28:00 -0000"])
def test_retry_after_as_an_http_date_means_seconds_from_now(date: str) -> None:
    assert retry_after_seconds(status_error(503, headers={"retry-after": date})) == 0.0  # in the past: no wait


# --- the loop, sync --------------------------------------------------------------------------
def test_retries_transient_failures_with_exact_backoff_without_jitter() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=5, base_delay=1, jitter="none"), clock)
    fn = Script(status_error(503), status_error(502), status_error(500), clock=clock)

    assert retrier.call(fn) == "ok"
    assert fn.calls == [0, 1, 3, 7]  # waits of 1, 2, 4 seconds on the virtual clock
    assert [w.delay for w in events.of(Wait)] == [1, 2, 4]
    assert [(a.attempt, a.ok, a.status) for a in events.of(Attempt)] == [(1, False, 503), (2, False, 502), (3, False, 500), (4, True, None)]
    assert events.of(GiveUp) == []


@pytest.mark.parametrize("jitter", JITTERS)
def test_waits_taken_on_the_clock_are_within_the_strategys_bounds(jitter: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(max_attempts=6, base_delay=1, max_delay=8, jitter=jitter, deadline=None)
    retrier, events = make(policy, clock)
    fn = Script(*[status_error(503)] * 5, clock=clock)

    retrier.call(fn)
    waits = [w.delay for w in events.of(Wait)]
    assert len(waits) == 5
    assert [b - a for a, b in zip(fn.calls, fn.calls[1:])] == pytest.approx(waits)
    previous = 1.0
    for n, wait in enumerate(waits, start=1):
        ceiling = min(8, 2 ** (n - 1))
        low, high = {"none": (ceiling, ceiling), "full": (0, ceiling), "equal": (ceiling / 2, ceiling), "decorrelated": (1, min(8, 3 * previous))}[jitter]
        assert low <= wait <= high, (n, wait)
        previous = wait
    if jitter != "none":
        assert len(set(waits)) > 1  # jitter actually varies the waits


def test_gives_up_after_max_attempts_and_raises_the_last_error_with_a_note() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=3, base_delay=1, jitter="none"), clock)
    last = status_error(503)
    fn = Script(status_error(503), status_error(503), last, clock=clock)

    with pytest.raises(openai.InternalServerError) as caught:
        retrier.call(fn)
    assert caught.value is last
    assert len(fn.calls) == 3
    assert "gave up after 3 attempt(s) (max-attempts)" in caught.value.__notes__[0]
    [give_up] = events.of(GiveUp)
    assert (give_up.attempts, give_up.reason, give_up.t) == (3, "max-attempts", 3)


@pytest.mark.parametrize("error", [status_error(400), status_error(404), status_error(429, code="insufficient_quota"), TypeError("bug")])
def test_non_retryable_errors_are_raised_after_one_attempt(error: Exception) -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=5), clock)
    fn = Script(error, clock=clock)

    with pytest.raises(type(error)):
        retrier.call(fn)
    assert len(fn.calls) == 1
    assert clock.now() == 0
    assert [g.reason for g in events.of(GiveUp)] == ["not-retryable"]


def test_honours_retry_after_instead_of_backoff() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=3, base_delay=0.1, jitter="none"), clock)
    fn = Script(status_error(429, headers={"retry-after-ms": "2500"}), status_error(429, headers={"retry-after": "4"}), clock=clock)

    assert retrier.call(fn) == "ok"
    assert fn.calls == [0, 2.5, 6.5]
    assert [(w.delay, w.reason) for w in events.of(Wait)] == [(2.5, "retry-after"), (4.0, "retry-after")]


def test_a_retry_after_longer_than_we_accept_gives_up_instead_of_coming_back_early() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=3, max_retry_after=20, deadline=None), clock)
    fn = Script(status_error(429, headers={"retry-after": "3600"}), clock=clock)

    with pytest.raises(openai.RateLimitError) as raised:
        retrier.call(fn)
    assert fn.calls == [0] and clock.now() == 0
    assert [g.reason for g in events.of(GiveUp)] == ["retry-after-too-long"]
    assert "(retry-after-too-long)" in raised.value.__notes__[0]


def test_never_waits_past_the_deadline() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=10, base_delay=2, jitter="none", deadline=5), clock)
    fn = Script(*[status_error(503)] * 10, clock=clock)

    with pytest.raises(openai.InternalServerError):
        retrier.call(fn)
    assert fn.calls == [0, 2]  # the next wait (4 s) would end at t=6, past the 5 s deadline
    assert clock.now() == 2
    assert events.of(GiveUp)[0].reason == "deadline"


def test_a_retry_after_longer_than_the_deadline_gives_up_at_once() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=5, deadline=10), clock)
    fn = Script(status_error(429, headers={"retry-after": "30"}), clock=clock)

    with pytest.raises(openai.RateLimitError):
        retrier.call(fn)
    assert len(fn.calls) == 1 and clock.now() == 0
    assert events.of(GiveUp)[0].reason == "deadline"


def test_slow_attempts_count_against_the_deadline() -> None:
    clock = VirtualClock()
    retrier, _ = make(RetryPolicy(max_attempts=10, base_delay=1, jitter="none", deadline=10), clock)
    calls = []

    def slow_failure() -> None:
        calls.append(clock.now())
        clock.advance(4)  # each attempt takes 4 s before it fails
        raise openai.APITimeoutError(request=REQUEST)

    with pytest.raises(openai.APITimeoutError):
        retrier.call(slow_failure)
    assert calls == [0, 5]  # 0-4, wait 1, 5-9; the next wait of 2 s would end past t=10


def test_interrupts_are_never_retried() -> None:
    clock = VirtualClock()
    retrier, _ = make(RetryPolicy(max_attempts=5), clock)
    fn = Script(KeyboardInterrupt(), clock=clock)
    with pytest.raises(KeyboardInterrupt):
        retrier.call(fn)
    assert len(fn.calls) == 1


def test_custom_classifier_decides_what_is_retried() -> None:
    clock = VirtualClock()
    retrier, _ = make(RetryPolicy(max_attempts=3, jitter="none"), clock, retry_on=lambda e: isinstance(e, KeyError))
    fn = Script(KeyError("a"), KeyError("b"), clock=clock)
    assert retrier.call(fn) == "ok"
    assert len(fn.calls) == 3


# --- retry budget ----------------------------------------------------------------------------
def test_budget_caps_retries_at_a_fraction_of_calls_during_an_outage() -> None:
    clock = VirtualClock()
    budget = RetryBudget(ratio=0.2, min_retries=0, window=60, clock=clock)
    retrier, events = make(RetryPolicy(max_attempts=4, base_delay=0.1, jitter="none", deadline=None), clock, budget=budget)
    always_down = Script(*[status_error(503)] * 10_000, clock=clock)

    for _ in range(50):
        with pytest.raises(openai.InternalServerError):
            retrier.call(always_down)
    retries = len(always_down.calls) - 50
    assert retries == 10  # 20% of 50 calls; without the budget it would be 150
    # every call ends on the budget: those that got a retry were refused their next one
    assert [g.reason for g in events.of(GiveUp)] == ["budget"] * 50


def test_budget_forgets_calls_older_than_its_window_even_when_nothing_fails() -> None:
    clock = VirtualClock()
    budget = RetryBudget(window=10, clock=clock)
    for _ in range(10_000):
        budget.record_call()
        clock.advance(1)
    assert len(budget._calls) <= 10


def test_budget_allows_min_retries_for_a_quiet_client_and_refills_after_the_window() -> None:
    clock = VirtualClock()
    budget = RetryBudget(ratio=0.0, min_retries=2, window=10, clock=clock)
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
    clock.advance(10)
    assert budget.try_spend()


@pytest.mark.parametrize(("field", "kwargs"), [("ratio", {"ratio": 1.5}), ("min_retries", {"min_retries": -1}), ("window", {"window": 0})])
def test_invalid_budget_names_the_field(field: str, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be"):
        RetryBudget(**kwargs)


# --- async and decorator forms ---------------------------------------------------------------
async def test_async_callables_are_retried_on_the_virtual_clock() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=4, base_delay=1, jitter="none"), clock)
    errors = [status_error(503), openai.APIConnectionError(request=REQUEST)]
    calls = []

    async def flaky() -> str:
        calls.append(clock.now())
        await clock.asleep(0.5)  # the call itself takes half a second
        if errors:
            raise errors.pop(0)
        return "ok"

    assert await retrier.call(flaky) == "ok"
    assert calls == [0, 1.5, 4]
    assert [a.duration for a in events.of(Attempt)] == [0.5, 0.5, 0.5]


async def test_async_non_retryable_and_give_up_match_sync_behaviour() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=2, jitter="none"), clock)

    @retrier.wrap
    async def bad_request() -> None:
        raise status_error(400)

    @retrier.wrap
    async def down() -> None:
        raise status_error(503)

    with pytest.raises(openai.BadRequestError):
        await bad_request()
    with pytest.raises(openai.InternalServerError):
        await down()
    assert [(g.attempts, g.reason) for g in events.of(GiveUp)] == [(1, "not-retryable"), (2, "max-attempts")]


async def test_concurrent_async_calls_are_deterministic() -> None:
    async def run_fleet() -> list[tuple[int, float]]:
        clock = VirtualClock()
        recorder = Recorder()
        retrier = Retrier(RetryPolicy(max_attempts=10, base_delay=1), clock=clock, on_event=recorder, seed=3)

        async def client(i: int) -> None:
            async def call() -> None:
                if clock.now() < 2:
                    raise status_error(503)

            await retrier.call(call)

        await asyncio.gather(*(client(i) for i in range(20)))
        return [(a.call_id, round(a.t, 9)) for a in recorder.of(Attempt)]

    first, second = await run_fleet(), await run_fleet()
    assert first == second
    assert len({call_id for call_id, _ in first}) == 20


def test_decorator_forms_keep_the_function_identity() -> None:
    clock = VirtualClock()

    @retry
    def plain() -> int:
        """Docs."""
        return 1

    @retry(policy=RetryPolicy(max_attempts=2), clock=clock)
    async def coroutine() -> int:
        return 2

    assert plain() == 1 and plain.__name__ == "plain" and plain.__doc__ == "Docs."
    assert inspect.iscoroutinefunction(coroutine)
    assert asyncio.run(coroutine()) == 2


def test_a_retrier_decorates_methods() -> None:
    clock = VirtualClock()
    retrier = Retrier(RetryPolicy(max_attempts=3, jitter="none"), clock=clock)

    class Agent:
        def __init__(self) -> None:
            self.errors = [status_error(503)]

        @retrier
        def ask(self, question: str) -> str:
            if self.errors:
                raise self.errors.pop()
            return question.upper()

    assert Agent().ask("hi") == "HI"


def test_no_events_are_built_without_a_recorder() -> None:
    clock = VirtualClock()
    retrier = Retrier(RetryPolicy(max_attempts=3, jitter="none"), clock=clock)
    fn = Script(status_error(503), clock=clock)
    assert retrier.call(fn) == "ok" and retrier.on_event is None


# --- through the real SDK against the simulated provider -----------------------------------
from course_lib.llm import make_async_client, make_client  # noqa: E402
from course_lib.sim import SimProvider  # noqa: E402

HELLO = [{"role": "user", "content": "Where is my order?"}]


def test_retries_a_real_outage_until_the_provider_recovers() -> None:
    clock = VirtualClock()
    provider = SimProvider({"faults": [{"kind": "outage", "start": 0, "end": 3, "status": 503}]}, clock=clock)
    client = make_client(provider)
    retrier, events = make(RetryPolicy(max_attempts=5, base_delay=1, jitter="none"), clock)

    reply = retrier.call(client.chat.completions.create, model="gpt-4o-mini", messages=HELLO)
    assert reply.choices[0].message.content
    assert [(c.t, c.status) for c in provider.log] == [(0, 503), (1, 503), (3, 200)]
    assert [a.status for a in events.of(Attempt)] == [503, 503, None]


def test_honours_the_providers_retry_after_header() -> None:
    clock = VirtualClock()
    provider = SimProvider({"faults": [{"kind": "rate_limit", "start": 0, "end": 2, "retry_after": 2}]}, clock=clock)
    retrier, events = make(RetryPolicy(max_attempts=3, base_delay=0.1), clock)
    retrier.call(make_client(provider).chat.completions.create, model="gpt-4o-mini", messages=HELLO)
    assert [(c.t, c.status) for c in provider.log] == [(0, 429), (2, 200)]
    assert [(w.delay, w.reason) for w in events.of(Wait)] == [(2.0, "retry-after")]


def test_sdk_retries_multiply_with_ours_unless_turned_off() -> None:
    def calls(sdk_retries: int) -> int:
        provider = SimProvider({"faults": [{"kind": "rate_limit", "retry_after": 0.001}]}, clock=VirtualClock())
        retrier = Retrier(RetryPolicy(max_attempts=3), clock=provider.clock)
        with pytest.raises(openai.RateLimitError):
            retrier.call(make_client(provider, max_retries=sdk_retries).chat.completions.create, model="gpt-4o-mini", messages=HELLO)
        return provider.calls()

    assert (calls(2), calls(0)) == (9, 3)


def test_quota_exhaustion_and_bad_requests_reach_the_provider_once() -> None:
    for faults, model, error in [([{"kind": "quota"}], "gpt-4o-mini", openai.RateLimitError), ([], "gpt-4o-mni", openai.NotFoundError)]:
        provider = SimProvider({"faults": faults}, clock=VirtualClock())
        with pytest.raises(error):
            Retrier(clock=provider.clock).call(make_client(provider).chat.completions.create, model=model, messages=HELLO)
        assert provider.calls() == 1


async def test_retries_the_async_sdks_methods_although_they_look_synchronous() -> None:
    clock = VirtualClock()
    provider = SimProvider({"faults": [{"kind": "outage", "end": 2}, {"kind": "drop", "start": 2, "end": 2.5}]}, clock=clock)
    client = make_async_client(provider)
    assert not inspect.iscoroutinefunction(client.chat.completions.create)  # the SDK wraps it
    retrier, events = make(RetryPolicy(max_attempts=5, base_delay=1, jitter="none"), clock)

    reply = await retrier.call(client.chat.completions.create, model="gpt-4o-mini", messages=HELLO)
    assert reply.usage.total_tokens > 0
    assert [(c.t, c.status, c.fault) for c in provider.log] == [(0, 503, "outage"), (1, 503, "outage"), (3, 200, None)]
    wrapped = retrier.wrap(client.chat.completions.create)
    assert (await wrapped(model="gpt-4o-mini", messages=HELLO)).choices


async def test_a_lambda_returning_a_coroutine_is_retried_on_the_async_path() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=3, base_delay=1, jitter="none"), clock)
    errors = [status_error(503)]

    async def flaky() -> str:
        if errors:
            raise errors.pop()
        return "ok"

    assert await retrier.call(lambda: flaky()) == "ok"
    assert [(a.attempt, a.ok) for a in events.of(Attempt)] == [(1, False), (2, True)]
    assert clock.now() == 1


@pytest.mark.parametrize(
    ("ratio", "min_retries", "calls", "allowed"),
    [(0.1, 0, 25, 2), (0.2, 0, 3, 0), (0.5, 0, 5, 2), (0.1, 0, 30, 3), (0.57, 0, 100, 57), (0.2, 2, 10, 4), (1.0, 0, 7, 7)],
)
def test_budget_never_allows_more_than_its_ratio(ratio: float, min_retries: int, calls: int, allowed: int) -> None:
    budget = RetryBudget(ratio=ratio, min_retries=min_retries, window=60, clock=VirtualClock())
    for _ in range(calls):
        budget.record_call()
    granted = sum(budget.try_spend() for _ in range(calls + min_retries + 1))
    assert granted == allowed  # at most min_retries + ratio * calls, and exactly that many


def test_decorrelated_jitter_draws_up_to_three_times_the_previous_wait() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=1000, jitter="decorrelated")
    rng = random.Random(3)
    waits = [policy.backoff(2, 10.0, rng) for _ in range(3000)]
    assert 1 <= min(waits) and max(waits) <= 30
    above_double = sum(w > 20 for w in waits) / len(waits)
    assert above_double == pytest.approx(10 / 29, abs=0.03)  # uniform(1, 30): a third lies above 2 x 10


# --- a caller's deadline (time_left) ---------------------------------------------------------
def until(clock: VirtualClock, at: float):
    """A time_left hook for a deadline at clock time `at`."""
    return lambda: max(0.0, at - clock.now())


def test_time_left_stops_before_a_wait_that_would_end_past_the_deadline() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=6, base_delay=0.5, jitter="none", deadline=None), clock,
                           time_left=until(clock, 2.0))
    fn = Script(*[status_error(503)] * 5, clock=clock)
    with pytest.raises(openai.InternalServerError) as raised:
        retrier.call(fn)
    assert fn.calls == [0, 0.5, 1.5]  # waits of 0.5 and 1.0; the next (2.0) would end at 3.5, past 2.0
    assert clock.now() == 1.5
    assert [w.delay for w in events.of(Wait)] == [0.5, 1.0]
    assert [(g.t, g.attempts, g.reason) for g in events.of(GiveUp)] == [(1.5, 3, "deadline")]
    assert raised.value.__notes__ == ["course_lib.retry 'retry': gave up after 3 attempt(s) (deadline)"]


def test_a_wait_ending_exactly_at_the_deadline_is_not_started() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=6, base_delay=0.5, jitter="none", deadline=None), clock,
                           time_left=until(clock, 1.5))
    fn = Script(*[status_error(503)] * 5, clock=clock)
    with pytest.raises(openai.InternalServerError):
        retrier.call(fn)
    assert fn.calls == [0, 0.5] and clock.now() == 0.5  # 1.0 left, and the wait would be 1.0
    assert [g.reason for g in events.of(GiveUp)] == ["deadline"]


def test_without_a_deadline_time_left_none_leaves_the_policy_in_charge() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(max_attempts=4, base_delay=0.5, jitter="none", deadline=None), clock,
                           time_left=lambda: None)
    fn = Script(*[status_error(503)] * 5, clock=clock)
    with pytest.raises(openai.InternalServerError):
        retrier.call(fn)
    assert fn.calls == [0, 0.5, 1.5, 3.5]
    assert [g.reason for g in events.of(GiveUp)] == ["max-attempts"]


def test_no_attempt_starts_when_the_wait_left_nothing() -> None:
    """A hook that reports 0 after a wait (a real clock overshooting, a deadline moved): the
    retrier does not start the attempt, and re-raises the last error."""
    clock = VirtualClock()
    answers = iter([5.0, 0.0])
    retrier, events = make(RetryPolicy(max_attempts=4, base_delay=1.0, jitter="none", deadline=None), clock,
                           time_left=lambda: next(answers))
    fn = Script(status_error(502), clock=clock)
    with pytest.raises(openai.InternalServerError) as raised:
        retrier.call(fn)
    assert fn.calls == [0] and clock.now() == 1.0
    assert [type(e).__name__ for e in events] == ["Attempt", "Wait", "GiveUp"]
    assert events.of(GiveUp)[0].t == 1.0 and events.of(GiveUp)[0].reason == "deadline"
    assert raised.value.status_code == 502


def test_a_non_retryable_error_is_not_charged_to_the_deadline() -> None:
    clock = VirtualClock()
    retrier, events = make(RetryPolicy(), clock, time_left=until(clock, 0.1))
    with pytest.raises(openai.BadRequestError):
        retrier.call(Script(status_error(400), clock=clock))
    assert [g.reason for g in events.of(GiveUp)] == ["not-retryable"]


async def test_async_time_left_gives_up_at_the_same_virtual_times() -> None:
    clock = VirtualClock()
    recorder = Recorder()
    calls: list[float] = []

    @retry(policy=RetryPolicy(max_attempts=6, base_delay=0.5, jitter="none", deadline=None), clock=clock,
           on_event=recorder, time_left=until(clock, 2.0))
    async def flaky() -> str:
        calls.append(clock.now())
        await clock.asleep(0.25)
        raise status_error(503)

    with pytest.raises(openai.InternalServerError):
        await flaky()
    # attempts take 0.25 s: the first fails at 0.25 and waits 0.5; the second fails at 1.0, with 1.0 left
    # for a wait of 1.0: it would end at the deadline, so it is not started
    assert calls == [0, 0.75]
    assert [w.delay for w in recorder.of(Wait)] == [0.5]
    assert [(g.t, g.attempts, g.reason) for g in recorder.of(GiveUp)] == [(1.0, 2, "deadline")]


async def test_async_real_sdk_under_an_outage_stops_at_the_deadline() -> None:
    clock = VirtualClock()
    provider = SimProvider({"faults": [{"kind": "outage"}, {"kind": "latency", "seconds": 0.25}]}, clock=clock)
    client = make_async_client(provider)
    retrier, recorder = make(RetryPolicy(max_attempts=10, base_delay=1.0, jitter="none", deadline=None), clock,
                           time_left=until(clock, 5.0))
    with pytest.raises(openai.InternalServerError):
        await retrier.call(client.chat.completions.create, model="gpt-4o-mini",
                           messages=[{"role": "user", "content": "hi"}])
    assert [c.t for c in provider.log] == [0, 1.25, 3.5]  # 0.25 s per attempt, waits of 1 and 2
    assert clock.now() == 3.75 and [g.reason for g in recorder.of(GiveUp)] == ["deadline"]  # a 4 s wait: past 5
