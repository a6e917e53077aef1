"""Client-side pacing from x-ratelimit headers, through the real SDK against the simulator."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from course_lib.clock import VirtualClock
from course_lib.events import Recorder, Wait
from course_lib.llm import make_async_client, make_client
from course_lib.pacing import (
    AsyncPacedTransport,
    LimitState,
    PacedTransport,
    ProviderPacer,
    estimate_request_tokens,
    parse_duration,
)
from course_lib.sim.models import count_prompt_tokens
from course_lib.sim.provider import SimProvider

MODEL = "gpt-4o-mini"
SHORT: Any = [{"role": "user", "content": "Hi"}]
TEN_RPM = {"key_limits": {"requests_per_minute": 10, "tokens_per_minute": 100_000}}
TOKENS_1000 = {"key_limits": {"requests_per_minute": 1000, "tokens_per_minute": 1000}}


def setup(plan: dict[str, Any], **pacer: Any) -> tuple[SimProvider, VirtualClock, ProviderPacer, Recorder]:
    clock, recorder = VirtualClock(), Recorder()
    provider = SimProvider(plan, clock=clock)
    return provider, clock, ProviderPacer(clock=clock, on_event=recorder, name="paced", **pacer), recorder


def ask(client: openai.OpenAI, max_tokens: int = 5) -> Any:
    return client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=max_tokens)


def waits(recorder: Recorder) -> list[tuple[float, float]]:
    return [(w.t, w.delay) for w in recorder.of(Wait)]


HEADERS = {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "0",
           "x-ratelimit-reset-requests": "6s", "x-ratelimit-limit-tokens": "1000",
           "x-ratelimit-remaining-tokens": "500", "x-ratelimit-reset-tokens": "30s"}


# --- the duration format ----------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("0s", 0.0), ("20ms", 0.02), ("1s", 1.0), ("0.5s", 0.5), ("1.5s", 1.5), ("59.999s", 59.999),
    ("6m0s", 360.0), ("1m30.25s", 90.25), ("1h0m0s", 3600.0), ("1h2m5s", 3725.0), ("2h", 7200.0),
    ("1m", 60.0), ("750us", 0.00075), ("500µs", 0.0005), ("100ns", 1e-7), (".5s", 0.5), (" 7s ", 7.0)])
def test_go_durations_are_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize("text", ["", "5", "1.5", "s", "1x", "1s2", "-1s", "1 s", "one second", "1d", "1e3s"])
def test_a_malformed_duration_is_a_value_error_quoting_it(text: str) -> None:
    with pytest.raises(ValueError, match=r"x-ratelimit reset must be a duration such as '1s'.*got " + repr(text)):
        parse_duration(text)


# --- reading headers ----------------------------------------------------------------------------
def test_headers_are_kept_per_limit_with_reset_times_on_the_pacer_clock() -> None:
    clock = VirtualClock(100.0)
    pacer = ProviderPacer(clock=clock)
    pacer.observe(HEADERS)
    assert pacer.state == {"requests": LimitState(10, 0, 106.0, 6.0), "tokens": LimitState(1000, 500, 130.0, 30.0)}
    assert pacer.ignored_headers == 0


@pytest.mark.parametrize(("name", "value"), [("x-ratelimit-reset-requests", "soon"),
                                             ("x-ratelimit-remaining-requests", "many"),
                                             ("x-ratelimit-remaining-requests", "-3"),
                                             ("x-ratelimit-limit-requests", "10.5")])
def test_a_malformed_header_is_ignored_and_counted_never_raised(name: str, value: str) -> None:
    pacer = ProviderPacer(clock=VirtualClock())
    pacer.observe({**HEADERS, name: value})
    assert set(pacer.state) == {"tokens"} and pacer.ignored_headers == 1
    assert pacer.reserve(10) == 0  # requests unknown: straight through


def test_a_malformed_header_keeps_the_previous_state() -> None:
    pacer = ProviderPacer(clock=VirtualClock())
    pacer.observe(HEADERS)
    pacer.observe({**HEADERS, "x-ratelimit-remaining-requests": "9", "x-ratelimit-reset-requests": "?"})
    assert pacer.state["requests"].remaining == 0 and pacer.ignored_headers == 1


def test_a_remaining_without_its_reset_is_ignored() -> None:
    pacer = ProviderPacer(clock=VirtualClock())
    pacer.observe({"x-ratelimit-remaining-requests": "0"})
    assert pacer.state == {} and pacer.ignored_headers == 1 and pacer.reserve(0) == 0


def test_the_pacer_never_waits_when_no_header_was_seen() -> None:
    provider, clock, pacer, recorder = setup({})  # no key_limits: no x-ratelimit header at all
    client = make_client(provider, pacer=pacer)
    for _ in range(50):
        ask(client)
    assert clock.now() == 0 and pacer.state == {} and len(recorder) == 0 and provider.calls(status=200) == 50


def test_settings_are_checked_with_the_field_and_the_limit() -> None:
    with pytest.raises(ValueError, match=r"min_remaining_requests must be >= 0, got -1"):
        ProviderPacer(min_remaining_requests=-1)
    with pytest.raises(ValueError, match=r"min_remaining_tokens must be >= 0, got 1.5"):
        ProviderPacer(min_remaining_tokens=1.5)  # type: ignore[arg-type]


def test_the_pacer_must_share_the_simulators_clock() -> None:
    with pytest.raises(ValueError, match="pacer.clock must be the provider's clock"):
        make_client(SimProvider(TEN_RPM, clock=VirtualClock()), pacer=ProviderPacer(clock=VirtualClock()))


# --- requests per minute, through the SDK -------------------------------------------------------
def test_without_the_pacer_the_eleventh_call_in_a_minute_is_refused() -> None:
    provider, _, _, _ = setup(TEN_RPM)
    client = make_client(provider)
    for _ in range(10):
        ask(client)
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client)
    assert refused.value.response.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert provider.calls(status=429) == 1


def test_with_the_pacer_thirty_calls_wait_exactly_for_the_resets_and_none_is_refused() -> None:
    provider, clock, pacer, recorder = setup(TEN_RPM)
    client = make_client(provider, pacer=pacer)
    for _ in range(30):
        ask(client)
    assert provider.calls(status=200) == 30 and provider.calls(status=429) == 0
    assert waits(recorder) == [(0.0, 60.0), (60.0, 60.0)]  # the 10th reply said "1m0s", twice
    assert [c.t for c in provider.log] == [0.0] * 10 + [60.0] * 10 + [120.0] * 10
    first = recorder.of(Wait)[0]
    assert (first.source, first.call_id, first.attempt, first.reason) == ("paced", 0, 0, "x-ratelimit")
    assert clock.now() == 120.0


def test_a_higher_request_reserve_waits_earlier() -> None:
    provider, _, pacer, recorder = setup(TEN_RPM, min_remaining_requests=3)
    client = make_client(provider, pacer=pacer)
    for _ in range(9):
        ask(client)
    # after 8 calls 2 are left, below the reserve of 3: the 9th waits for the reset the 8th reply quoted
    assert waits(recorder) == [(0.0, 48.0)] and [c.t for c in provider.log] == [0.0] * 8 + [48.0]


# --- tokens per minute --------------------------------------------------------------------------
def test_a_request_needing_more_tokens_than_are_left_waits_for_the_token_reset() -> None:
    provider, _, pacer, recorder = setup(TOKENS_1000)
    client = make_client(provider, pacer=pacer)
    each = 300 - count_prompt_tokens(SHORT, MODEL)  # so that every call costs 300 tokens
    replies = [client.chat.completions.with_raw_response.create(model=MODEL, messages=SHORT, max_tokens=each)
               for _ in range(3)]
    assert replies[-1].headers["x-ratelimit-remaining-tokens"] == "100"
    quoted = parse_duration(replies[-1].headers["x-ratelimit-reset-tokens"])
    assert quoted == 54.0
    ask(client, each)
    assert waits(recorder) == [(0.0, 54.0)] and provider.calls(status=429) == 0
    ask(client, 100 - count_prompt_tokens(SHORT, MODEL))  # 700 left after the 4th: no wait
    assert len(recorder) == 1


def test_a_token_reserve_is_kept_after_the_estimate() -> None:
    provider, _, pacer, recorder = setup(TOKENS_1000, min_remaining_tokens=150)
    client = make_client(provider, pacer=pacer)
    each = 300 - count_prompt_tokens(SHORT, MODEL)
    for _ in range(3):
        ask(client, each)
    # 400 left after two calls; 300 more would leave 100, under the reserve of 150
    assert waits(recorder) == [(0.0, 36.0)] and [c.t for c in provider.log] == [0.0, 0.0, 36.0]


def test_a_request_larger_than_the_whole_limit_is_not_held_back() -> None:
    provider, clock, pacer, recorder = setup(TOKENS_1000)
    client = make_client(provider, pacer=pacer)
    ask(client)
    with pytest.raises(openai.RateLimitError, match="Request too large"):
        ask(client, 1001)
    assert len(recorder) == 0 and clock.now() == 0


def test_the_estimate_is_the_prompt_plus_the_allowed_answer() -> None:
    prompt = count_prompt_tokens(SHORT, MODEL)
    assert estimate_request_tokens({"model": MODEL, "messages": SHORT, "max_tokens": 40}) == prompt + 40
    assert estimate_request_tokens({"model": MODEL, "messages": SHORT, "max_completion_tokens": 7}) == prompt + 7
    unknown = [{"role": "user", "content": "x" * 400}]  # 436 characters of JSON, about 4 to a token
    assert estimate_request_tokens({"model": "unknown", "messages": unknown}) == 109
    assert estimate_request_tokens({"input": "moderate me"}) == 0


# --- async --------------------------------------------------------------------------------------
def test_the_async_client_is_paced_the_same_way() -> None:
    provider, clock, pacer, recorder = setup(TEN_RPM)
    client = make_async_client(provider, pacer=pacer)

    async def run() -> None:
        for _ in range(30):
            await client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=5)

    asyncio.run(run())
    assert provider.calls(status=200) == 30 and provider.calls(status=429) == 0
    assert waits(recorder) == [(0.0, 60.0), (60.0, 60.0)] and clock.now() == 120.0


def test_concurrent_async_calls_are_counted_before_their_replies_arrive() -> None:
    provider, _, pacer, _ = setup(TEN_RPM)
    client = make_async_client(provider, pacer=pacer)

    async def run() -> None:
        await client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=5)  # learn the limits
        await asyncio.gather(*(client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=5)
                               for _ in range(29)))

    asyncio.run(run())
    assert provider.calls(status=429) == 0
    assert [c.t for c in provider.log] == [0.0] * 10 + [60.0] * 10 + [120.0] * 10


@pytest.mark.parametrize(("factory", "transport"), [(make_client, PacedTransport),
                                                    (make_async_client, AsyncPacedTransport)])
def test_a_real_client_gets_the_pacer_in_its_transport(monkeypatch: pytest.MonkeyPatch, factory: Any,
                                                        transport: type[Any]) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    pacer = ProviderPacer()
    client = factory(real=True, pacer=pacer)
    paced: Any = client._client._transport  # no request is sent: only the wiring is checked
    assert type(paced) is transport and paced.pacer is pacer and str(client.base_url).startswith("https://")
