"""course_lib.timeouts: deadlines passed down into calls, tools and retries, and guarded streams,
on a virtual clock through the real openai SDK against the simulated provider."""

from __future__ import annotations

import asyncio
import math
import warnings
from collections.abc import AsyncIterator

import httpx2
import openai
import pytest

from course_lib.breaker import is_provider_failure
from course_lib.clock import VirtualClock
from course_lib.events import DeadlineCut, GiveUp, Recorder, StreamCut
from course_lib.llm import make_async_client, make_client
from course_lib.retry import Retrier, RetryPolicy, is_transient
from course_lib.sim import SimProvider
from course_lib.timeouts import (
    Deadline,
    DeadlineExceeded,
    StreamCutError,
    StreamLimits,
    chunk_text,
    current_deadline,
    deadline_scope,
    guard_stream,
    time_left,
)

HELLO = [{"role": "user", "content": "Hello, what is your refund policy?"}]
MODEL = "gpt-4o-mini"
SLOW = {"kind": "slow_stream", "first_token_seconds": 2.0, "chunk_seconds": 0.25, "stall_after": 3,
        "stall_seconds": 600}
WHOLE = make_client(SimProvider()).chat.completions.create(model=MODEL, messages=HELLO).choices[0].message.content


def deadline_on(seconds: float, clock: VirtualClock | None = None) -> tuple[Deadline, Recorder, VirtualClock]:
    clock = clock or VirtualClock()
    recorder = Recorder()
    return Deadline(seconds, clock=clock, on_event=recorder, name="run-1"), recorder, clock


# --- the deadline --------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds", [0, -1, math.inf, math.nan, "5"])
def test_a_deadline_must_be_a_positive_finite_number_of_seconds(seconds: object) -> None:
    with pytest.raises(ValueError, match=r"^seconds must be a finite number > 0, got "):
        Deadline(seconds)  # type: ignore[arg-type]


def test_remaining_elapsed_and_expired_follow_the_clock() -> None:
    deadline, _, clock = deadline_on(5, VirtualClock(start=100))
    assert (deadline.budget, deadline.started, deadline.at) == (5.0, 100.0, 105.0)
    clock.advance(2)
    assert (deadline.remaining(), deadline.elapsed(), deadline.expired()) == (3.0, 2.0, False)
    clock.advance(3)
    assert (deadline.remaining(), deadline.expired()) == (0.0, True)
    clock.advance(1)
    assert deadline.remaining() == 0.0 and deadline.elapsed() == 6.0  # never below zero


def test_check_raises_once_expired_with_stage_budget_and_elapsed() -> None:
    deadline, recorder, clock = deadline_on(5)
    deadline.check("model")
    clock.advance(5)
    with pytest.raises(DeadlineExceeded) as raised:
        deadline.check("model")
    assert str(raised.value) == "deadline of 5s exceeded at model after 5.00s"
    assert (raised.value.stage, raised.value.budget, raised.value.elapsed) == ("model", 5.0, 5.0)
    assert recorder.events == [DeadlineCut(5.0, "run-1", "model", 5.0, 5.0, "")]


def test_deadline_exceeded_is_not_a_timeout_so_neither_retry_nor_breaker_charge_the_provider() -> None:
    error = DeadlineExceeded("model", 5, 5)
    assert not isinstance(error, TimeoutError)
    assert not is_provider_failure(error) and not is_transient(error)


def test_timeout_is_the_cap_or_the_time_left_whichever_is_smaller() -> None:
    deadline, recorder, clock = deadline_on(10)
    assert deadline.timeout(30, "model") == 10
    assert deadline.timeout(4, "model") == 4
    assert deadline.timeout(None, "model") == 10
    clock.advance(7.5)
    assert deadline.timeout(4, "tool") == 2.5
    clock.advance(2.5)
    with pytest.raises(DeadlineExceeded, match="at tool after 10.00s"):
        deadline.timeout(4, "tool")
    assert [(e.t, e.stage) for e in recorder.of(DeadlineCut)] == [(10.0, "tool")]
    with pytest.raises(ValueError, match=r"^cap must be None or a finite number > 0, got 0$"):
        deadline.timeout(0, "model")


# --- passing the time left into the SDK call -------------------------------------------------------
def test_bound_turns_the_sdk_timeout_into_deadline_exceeded_when_the_deadline_set_it() -> None:
    clock = VirtualClock()
    client = make_client(SimProvider({"faults": [{"kind": "hang"}]}, clock=clock))
    deadline, recorder, _ = deadline_on(10, clock)
    with pytest.raises(DeadlineExceeded) as raised, deadline.bound(30, "model") as timeout:
        client.chat.completions.create(model=MODEL, messages=HELLO, timeout=timeout)
    assert timeout == 10 and clock.now() == 10  # not the SDK's 600 s, nor the cap's 30
    assert isinstance(raised.value.__cause__, openai.APITimeoutError)
    assert recorder.events == [DeadlineCut(10.0, "run-1", "model", 10.0, 10.0, "APITimeoutError")]


def test_bound_lets_the_providers_timeout_through_when_the_cap_set_it() -> None:
    clock = VirtualClock()
    client = make_client(SimProvider({"faults": [{"kind": "hang"}]}, clock=clock))
    deadline, recorder, _ = deadline_on(10, clock)
    with pytest.raises(openai.APITimeoutError), deadline.bound(4, "model") as timeout:
        client.chat.completions.create(model=MODEL, messages=HELLO, timeout=timeout)
    assert clock.now() == 4 and recorder.events == []  # the provider was slow: retry and breaker see it


@pytest.mark.parametrize("error", [httpx2.ReadTimeout("slow"), TimeoutError()], ids=["httpx2", "builtin"])
def test_bound_recognises_every_kind_of_timeout(error: Exception) -> None:
    deadline, _, clock = deadline_on(3)
    with pytest.raises(DeadlineExceeded), deadline.bound(None, "tool"):
        clock.advance(3)
        raise error


def test_bound_with_no_time_left_makes_no_request() -> None:
    clock = VirtualClock()
    provider = SimProvider(clock=clock)
    deadline, recorder, _ = deadline_on(1, clock)
    clock.advance(1)
    with pytest.raises(DeadlineExceeded), deadline.bound(30, "model") as timeout:
        make_client(provider).chat.completions.create(model=MODEL, messages=HELLO, timeout=timeout)
    assert provider.log == [] and len(recorder.of(DeadlineCut)) == 1


async def test_bound_works_as_async_with_around_the_async_sdk() -> None:
    clock = VirtualClock()
    client = make_async_client(SimProvider({"faults": [{"kind": "latency", "seconds": 0.75}]}, clock=clock))
    deadline, _, _ = deadline_on(2, clock)
    async with deadline.bound(30, "model") as timeout:
        reply = await client.chat.completions.create(model=MODEL, messages=HELLO, timeout=timeout)
    assert reply.choices[0].message.content == WHOLE and clock.now() == 0.75
    with pytest.raises(DeadlineExceeded):
        async with deadline.bound(30, "model") as timeout:  # 1.25 s left; the latency fits, a hang would not
            await clock.asleep(1.25)
            raise openai.APITimeoutError(request=httpx2.Request("POST", "http://sim.local"))


# --- awaiting a tool ---------------------------------------------------------------------------------
async def test_run_returns_in_time_and_cancels_at_exactly_the_deadline_running_cleanup() -> None:
    deadline, recorder, clock = deadline_on(3)
    cleaned: list[float] = []

    async def tool(seconds: float) -> str:
        try:
            await clock.asleep(seconds)
            return "found"
        finally:
            cleaned.append(clock.now())

    assert await deadline.run(tool(1), "tool") == "found"
    with pytest.raises(DeadlineExceeded, match="at tool after 3.00s: cancelled"):
        await deadline.run(tool(60), "tool")
    assert clock.now() == 3 and cleaned == [1, 3]
    assert [(e.t, e.stage, e.detail) for e in recorder.of(DeadlineCut)] == [(3.0, "tool", "cancelled")]


async def test_run_passes_the_awaitables_own_errors_through_a_timeout_error_too() -> None:
    deadline, recorder, clock = deadline_on(3)

    async def fails(error: Exception) -> None:
        await clock.asleep(1)
        raise error

    with pytest.raises(TimeoutError, match="its own"):
        await deadline.run(fails(TimeoutError("its own")), "tool")
    with pytest.raises(KeyError):
        await deadline.run(fails(KeyError("order")), "tool")
    assert recorder.events == [] and clock.now() == 2


async def test_run_with_no_time_left_never_starts_the_coroutine() -> None:
    deadline, _, clock = deadline_on(1)
    clock.advance(2)
    started = []

    async def tool() -> None:
        started.append(True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine was never awaited" would be a warning
        with pytest.raises(DeadlineExceeded, match="not started"):
            await deadline.run(tool(), "tool")
    assert started == []


# --- the current deadline ------------------------------------------------------------------------------
async def test_deadline_scope_sets_the_current_deadline_for_the_code_inside_and_its_tasks() -> None:
    outer, _, clock = deadline_on(10)
    inner = Deadline(2, clock=clock)
    assert current_deadline() is None and time_left() is None
    with deadline_scope(outer):
        assert current_deadline() is outer and time_left() == 10
        async with deadline_scope(inner):
            assert await asyncio.create_task(asyncio.sleep(0, result=time_left())) == 2
        clock.advance(4)
        assert time_left() == 6
        with pytest.raises(KeyError), deadline_scope(inner):
            raise KeyError("bug")
        assert current_deadline() is outer
    assert current_deadline() is None


async def test_concurrent_runs_each_see_their_own_deadline() -> None:
    clock = VirtualClock()

    async def run(seconds: float) -> list[float | None]:
        with deadline_scope(Deadline(seconds, clock=clock)):
            seen = [time_left()]
            await clock.asleep(1)
            return [*seen, time_left()]

    assert await asyncio.gather(run(5), run(8)) == [[5, 4], [8, 7]]


def test_retrier_with_time_left_stops_retrying_at_the_runs_deadline() -> None:
    clock = VirtualClock()
    provider = SimProvider({"faults": [{"kind": "outage"}]}, clock=clock)
    client = make_client(provider)
    recorder = Recorder()
    retrier = Retrier(RetryPolicy(max_attempts=10, base_delay=1, jitter="none", deadline=None), clock=clock,
                      on_event=recorder, time_left=time_left)
    with deadline_scope(Deadline(6, clock=clock)), pytest.raises(openai.InternalServerError):
        retrier.call(client.chat.completions.create, model=MODEL, messages=HELLO)
    assert [c.t for c in provider.log] == [0, 1, 3]  # the next wait, 4 s, would end at 7
    assert [(g.t, g.reason) for g in recorder.of(GiveUp)] == [(3.0, "deadline")]


async def test_one_agent_run_model_retry_tool_model_ends_at_exactly_the_deadline() -> None:
    """The composition the service uses: a first call that hangs (the cap cuts it, retry tries
    again), a tool, a final call that hangs: cut at the deadline, not at the cap."""
    clock = VirtualClock()
    provider = SimProvider({"faults": [{"kind": "hang", "end": 1}, {"kind": "hang", "start": 9},
                                       {"kind": "latency", "seconds": 0.75}]}, clock=clock)
    client = make_async_client(provider)
    deadline, recorder, _ = deadline_on(10, clock)
    retrier = Retrier(RetryPolicy(max_attempts=3, base_delay=0.5, jitter="none", deadline=None), clock=clock,
                      on_event=recorder, time_left=time_left)

    async def model() -> str:
        with deadline.bound(8, "model") as timeout:
            reply = await client.chat.completions.create(model=MODEL, messages=HELLO, timeout=timeout)
        return reply.choices[0].message.content

    with deadline_scope(deadline), pytest.raises(DeadlineExceeded):
        await retrier.call(model)
        await deadline.run(clock.asleep(0.5), "tool")
        await retrier.call(model)
    assert clock.now() == 10
    assert [(c.t, c.status) for c in provider.log] == [(0, None), (8.5, 200), (9.75, None)]
    assert [(e.t, e.stage) for e in recorder.of(DeadlineCut)] == [(10.0, "model")]
    assert [g.reason for g in recorder.of(GiveUp)] == ["not-retryable"]  # our deadline is no reason to retry


# --- streams -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["first_token", "idle", "total"])
@pytest.mark.parametrize("value", [0, -1, math.inf])
def test_stream_limits_must_be_positive_and_finite(field: str, value: float) -> None:
    limits = {"first_token": 5.0, "idle": 1.0, "total": 30.0, field: value}
    with pytest.raises(ValueError, match=rf"^{field} must be a finite number > 0, got "):
        StreamLimits(**limits)


async def open_stream(*faults: dict, clock: VirtualClock, timeout: float = 30.0):
    client = make_async_client(SimProvider({"faults": list(faults)}, clock=clock), timeout=timeout)
    return await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)


async def drain(guarded: AsyncIterator) -> list[str]:
    return [chunk_text(chunk) async for chunk in guarded]


async def test_a_stall_after_three_chunks_is_cut_by_the_idle_limit_with_the_partial_text() -> None:
    clock, recorder = VirtualClock(), Recorder()
    stream = await open_stream(SLOW, clock=clock)
    with pytest.raises(StreamCutError) as raised:
        await drain(guard_stream(stream, StreamLimits(first_token=5, idle=1, total=30), clock=clock,
                                 on_event=recorder, name="answer"))
    cut = raised.value
    assert (cut.reason, cut.limit, cut.pieces) == ("idle", 1, 3)
    assert clock.now() == 2.75 + 1 and WHOLE.startswith(cut.partial) and len(cut.partial) > 10
    assert str(cut) == f"stream cut (idle): no chunk for 1s; 3 piece(s), {len(cut.partial)} characters had arrived"
    assert recorder.events == [StreamCut(3.75, "answer", "idle", 1.0, 3, len(cut.partial))]
    assert stream.response.is_closed  # the connection is released, not left to the 600 s stall


async def test_a_slow_first_token_is_cut_by_the_first_token_limit() -> None:
    clock = VirtualClock()
    stream = await open_stream({**SLOW, "first_token_seconds": 12}, clock=clock)
    with pytest.raises(StreamCutError) as raised:
        await drain(guard_stream(stream, StreamLimits(first_token=5, idle=1, total=30), clock=clock))
    assert (raised.value.reason, raised.value.partial, raised.value.pieces, clock.now()) == ("first_token", "", 0, 5)


async def test_a_steady_but_slow_stream_is_cut_by_the_total_limit() -> None:
    clock = VirtualClock()
    stream = await open_stream({**SLOW, "chunk_seconds": 0.5, "stall_after": None}, clock=clock)
    with pytest.raises(StreamCutError) as raised:
        await drain(guard_stream(stream, StreamLimits(first_token=5, idle=1, total=4), clock=clock))
    assert raised.value.reason == "total" and clock.now() == 4
    assert raised.value.pieces == 4  # chunks at 2.5, 3, 3.5 and 4 carried text; the one at 2 only the role


async def test_the_current_deadline_bounds_every_wait_and_is_named_when_it_cuts() -> None:
    clock, recorder = VirtualClock(), Recorder()
    deadline = Deadline(3, clock=clock, on_event=recorder)
    stream = await open_stream({**SLOW, "stall_after": 2, "stall_seconds": 0.75}, clock=clock)
    with deadline_scope(deadline), pytest.raises(StreamCutError) as raised:
        await drain(guard_stream(stream, StreamLimits(first_token=5, idle=1, total=30), clock=clock,
                                 on_event=recorder))
    assert (raised.value.reason, raised.value.limit, raised.value.pieces, clock.now()) == ("deadline", 3, 2, 3)
    assert isinstance(raised.value.__cause__, DeadlineExceeded)
    assert [type(e).__name__ for e in recorder] == ["StreamCut", "DeadlineCut"]
    assert recorder.of(DeadlineCut)[0].stage == "stream"


async def test_a_stream_within_its_limits_is_passed_through_unchanged() -> None:
    clock = VirtualClock()
    stream = await open_stream({**SLOW, "stall_after": None}, clock=clock)
    recorder = Recorder()
    pieces = await drain(guard_stream(stream, StreamLimits(first_token=5, idle=1, total=30), clock=clock,
                                      on_event=recorder))
    assert "".join(pieces) == WHOLE and recorder.events == [] and stream.response.is_closed


async def test_on_a_tie_the_streams_own_limit_is_named() -> None:
    clock = VirtualClock()
    stream = await open_stream({**SLOW, "first_token_seconds": 12}, clock=clock)
    with pytest.raises(StreamCutError) as raised:
        await drain(guard_stream(stream, StreamLimits(first_token=5, idle=1, total=5), clock=clock))
    assert raised.value.reason == "first_token"


class Source:
    """An async stream of strings at given times that records whether it was closed."""

    def __init__(self, clock: VirtualClock, times: list[float], error: Exception | None = None) -> None:
        self.clock, self.times, self.error, self.closed = clock, times, error, False

    async def pieces(self) -> AsyncIterator[str]:
        for n, at in enumerate(self.times):
            await self.clock.asleep(at - self.clock.now())
            yield f"<{n}>"
        if self.error is not None:
            raise self.error

    def __aiter__(self) -> AsyncIterator[str]:
        return self.pieces()

    async def aclose(self) -> None:
        self.closed = True


async def test_any_async_iterable_with_its_own_text_of_and_aclose() -> None:
    clock = VirtualClock()
    source = Source(clock, [0.5, 1.0, 4.0])
    with pytest.raises(StreamCutError) as raised:
        await drain(guard_stream(source, StreamLimits(1, 2, 10), clock=clock, text_of=str))
    assert (raised.value.partial, raised.value.reason, clock.now(), source.closed) == ("<0><1>", "idle", 3, True)


async def test_the_streams_own_errors_pass_through_and_still_close_it() -> None:
    clock = VirtualClock()
    source = Source(clock, [0.5], error=TimeoutError("the provider's own"))
    with pytest.raises(TimeoutError, match="provider's own"):
        await drain(guard_stream(source, StreamLimits(1, 2, 10), clock=clock, text_of=str))
    assert source.closed and clock.now() == 0.5


async def test_stopping_early_closes_the_stream() -> None:
    clock = VirtualClock()
    stream = await open_stream({**SLOW, "stall_after": None}, clock=clock)
    guarded = guard_stream(stream, StreamLimits(first_token=5, idle=1, total=30), clock=clock)
    async for chunk in guarded:
        if chunk_text(chunk):
            break
    await guarded.aclose()
    assert stream.response.is_closed and clock.now() == 2.25


def test_chunk_text_reads_content_and_gives_empty_text_for_other_chunks() -> None:
    chunks = list(make_client(SimProvider()).chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}))
    texts = [chunk_text(chunk) for chunk in chunks]
    assert "".join(texts) == WHOLE and texts[0] == "" and texts[-1] == "" and chunk_text(object()) == ""
