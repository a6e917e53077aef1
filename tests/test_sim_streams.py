"""The simulator's slow_stream fault through the real openai SDK (`stream=True`): exact chunk times
on a virtual clock in-process, sync and async, and real delays over HTTP with `serve`."""

from __future__ import annotations

import itertools
import time

import openai
import pytest

from course_lib.clock import VirtualClock
from course_lib.llm import make_async_client, make_client
from course_lib.sim import FaultPlan, FaultPlanError, SimProvider
from course_lib.sim.server import serve

HELLO = [{"role": "user", "content": "Hello, what is your refund policy?"}]
MODEL = "gpt-4o-mini"
# Delays that are exact in binary, so that sums of them compare equal on the virtual clock.
SLOW = {"kind": "slow_stream", "first_token_seconds": 2.0, "chunk_seconds": 0.25, "stall_after": 3,
        "stall_seconds": 600}
WHOLE = make_client(SimProvider()).chat.completions.create(model=MODEL, messages=HELLO).choices[0].message.content


def setup(*faults: dict, timeout: float = 30.0) -> tuple[openai.OpenAI, SimProvider, VirtualClock]:
    clock = VirtualClock()
    provider = SimProvider({"faults": list(faults)}, clock=clock)
    return make_client(provider, timeout=timeout), provider, clock


def text(chunk) -> str:
    return (chunk.choices[0].delta.content or "") if chunk.choices else ""


def stream(client: openai.OpenAI, **options):
    return client.chat.completions.create(model=MODEL, messages=HELLO, stream=True, **options)


def timed(chunks, clock: VirtualClock) -> list[tuple[float, str]]:
    """(clock time, text) of each chunk as the SDK hands it over."""
    return [(clock.now(), text(chunk)) for chunk in chunks]


# --- in-process, virtual clock -------------------------------------------------------------------
def test_first_chunk_comes_after_first_token_seconds_and_the_rest_at_the_chunk_pace() -> None:
    client, provider, clock = setup({**SLOW, "stall_after": None})
    replies = stream(client)
    assert clock.now() == 0  # the response head is not delayed
    seen = timed(replies, clock)
    assert [t for t, _ in seen] == [2.0 + 0.25 * i for i in range(len(seen))]
    assert seen[0][1] == "" and "".join(piece for _, piece in seen) == WHOLE
    assert clock.now() == 2.0 + 0.25 * len(seen)  # the SDK reads [DONE], one step after the last chunk
    assert [(c.status, c.fault) for c in provider.log] == [(200, "slow_stream")]


def test_a_stall_is_cut_at_exactly_the_read_timeout() -> None:
    client, _, clock = setup(SLOW, timeout=5.0)
    replies = stream(client)
    seen = []
    with pytest.raises(openai.APITimeoutError):
        for chunk in replies:
            seen.append((clock.now(), text(chunk)))
    assert [t for t, _ in seen] == [2.0, 2.25, 2.5, 2.75]  # the opening chunk, then 3 content chunks
    assert clock.now() == 2.75 + 5.0
    assert "".join(piece for _, piece in seen) == WHOLE[:len("".join(piece for _, piece in seen))]


def test_a_first_token_later_than_the_read_timeout_times_out_at_the_timeout() -> None:
    client, _, clock = setup({**SLOW, "first_token_seconds": 40.0}, timeout=5.0)
    replies = stream(client)
    with pytest.raises(openai.APITimeoutError):
        next(iter(replies))
    assert clock.now() == 5.0


def test_a_stall_shorter_than_the_timeout_delays_the_rest_and_loses_nothing() -> None:
    client, _, clock = setup({**SLOW, "stall_seconds": 3.0}, timeout=5.0)
    seen = timed(stream(client, stream_options={"include_usage": True}), clock)
    times = [t for t, _ in seen]
    assert times[:5] == [2.0, 2.25, 2.5, 2.75, 5.75]
    assert all(later - earlier == 0.25 for earlier, later in itertools.pairwise(times[4:]))
    assert "".join(piece for _, piece in seen) == WHOLE


async def test_the_async_client_gets_the_same_pace_and_the_same_cut() -> None:
    clock = VirtualClock()
    client = make_async_client(SimProvider({"faults": [SLOW]}, clock=clock), timeout=5.0)
    replies = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    seen = []
    with pytest.raises(openai.APITimeoutError):
        async for chunk in replies:
            seen.append(clock.now())
    assert seen == [2.0, 2.25, 2.5, 2.75] and clock.now() == 7.75


async def test_closing_a_stalled_stream_ends_it_without_waiting_for_the_stall() -> None:
    clock = VirtualClock()
    client = make_async_client(SimProvider({"faults": [SLOW]}, clock=clock), timeout=None)
    replies = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    pieces = []
    async for chunk in replies:
        pieces.append(text(chunk))
        if len(pieces) == 4:
            break
    await replies.close()
    assert clock.now() == 2.75 and len(pieces) == 4
    assert [chunk async for chunk in replies.response.stream] == []  # nothing more comes after close


def test_a_late_reader_finds_the_chunks_already_there() -> None:
    """Chunks are due at times counted from the response head, as bytes wait in a socket."""
    client, _, clock = setup({**SLOW, "stall_after": None}, timeout=1.0)
    replies = stream(client)
    clock.advance(10)  # the caller does something else before reading
    seen = timed(replies, clock)
    assert "".join(piece for _, piece in seen) == WHOLE and clock.now() == 10


def test_latency_delays_the_head_and_the_pace_starts_after_it() -> None:
    client, _, clock = setup({"kind": "latency", "seconds": 1.5}, {**SLOW, "stall_after": None})
    replies = stream(client)
    assert clock.now() == 1.5
    assert next(iter(replies)) and clock.now() == 3.5


def test_only_streams_are_paced_and_refusals_win() -> None:
    client, provider, clock = setup({"kind": "outage", "end": 1}, SLOW)
    with pytest.raises(openai.InternalServerError):
        stream(client)
    clock.advance(1)
    reply = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert clock.now() == 1 and reply.choices[0].message.content == WHOLE
    assert [(c.status, c.fault) for c in provider.log] == [(503, "outage"), (200, None)]


def test_stall_after_counts_content_chunks_only() -> None:
    client, _, clock = setup({**SLOW, "stall_after": 0, "stall_seconds": 1.0})
    assert [t for t, _ in timed(stream(client), clock)][:3] == [2.0, 3.0, 3.25]
    client, _, clock = setup({**SLOW, "stall_after": 1000, "stall_seconds": 1.0})  # never that many: no stall
    times = [t for t, _ in timed(stream(client), clock)]
    assert times == [2.0 + 0.25 * i for i in range(len(times))]


def test_windows_models_and_rate_decide_which_streams_are_paced() -> None:
    client, provider, clock = setup({**SLOW, "start": 5, "models": ["gpt-4o"]}, timeout=1.0)
    list(stream(client))  # before the window
    clock.advance(5)
    list(client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))  # another model
    assert clock.now() == 5
    with pytest.raises(openai.APITimeoutError):
        list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
    assert clock.now() == 6 and [c.fault for c in provider.log] == [None, None, "slow_stream"]

    def paced(seed: int) -> list[str | None]:
        provider = SimProvider({"seed": seed, "faults": [{**SLOW, "stall_after": None, "rate": 0.5}]},
                               clock=VirtualClock())
        client = make_client(provider)
        for _ in range(8):
            list(stream(client))
        return [c.fault for c in provider.log]

    assert paced(3) == paced(3) and 0 < paced(3).count("slow_stream") < 8


def test_tool_call_streams_are_paced_too() -> None:
    tools = [{"type": "function", "function": {"name": "lookup_order", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}]
    client, _, clock = setup({**SLOW, "stall_after": None})
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Order 4471?"}],
                                                 tools=tools, stream=True))
    assert chunks[0].choices[0].delta.tool_calls[0].function.name == "lookup_order"
    assert clock.now() == 2.0 + 0.25 * len(chunks)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"first_token_seconds": -1},
         "faults[0] (slow_stream): first_token_seconds: Input should be greater than or equal to 0, got -1"),
        ({"chunk_seconds": float("inf")}, "faults[0] (slow_stream): chunk_seconds: Input should be a finite number"),
        ({"stall_after": -2},
         "faults[0] (slow_stream): stall_after: Input should be greater than or equal to 0, got -2"),
        ({"stall_seconds": 0}, "faults[0] (slow_stream): stall_seconds: Input should be greater than 0, got 0"),
        ({"models": ["omni-moderation-latest"]}, "slow_stream paces streamed chat completions only"),
        ({"speed": 2}, "faults[0] (slow_stream): speed: Extra inputs are not permitted"),
    ],
)
def test_a_bad_slow_stream_names_the_field(fault: dict, message: str) -> None:
    with pytest.raises(FaultPlanError) as raised:
        FaultPlan.parse({"faults": [{"kind": "slow_stream", **fault}]})
    assert message in str(raised.value)


def test_a_slow_stream_plan_saves_and_loads_back(tmp_path) -> None:
    plan = FaultPlan.parse({"faults": [SLOW]})
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())
    assert FaultPlan.from_file(path) == plan


# --- over HTTP, real time -------------------------------------------------------------------------
def test_over_http_the_chunks_really_come_at_that_pace_and_a_stall_times_out() -> None:
    fault = {"kind": "slow_stream", "first_token_seconds": 0.15, "chunk_seconds": 0.05, "stall_after": 2,
             "stall_seconds": 30}
    with serve(SimProvider({"faults": [fault]})) as server:
        client = openai.OpenAI(base_url=server.url, api_key="sk-local", max_retries=0, timeout=0.4)
        started = time.monotonic()
        replies = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
        head = time.monotonic()
        arrived = []
        with pytest.raises(openai.APITimeoutError):
            for _ in replies:
                arrived.append(time.monotonic())
        ended = time.monotonic()
        assert len(arrived) == 3  # the opening chunk and 2 content chunks, then the stall
        assert arrived[0] - head >= 0.14 and arrived[1] - arrived[0] >= 0.04 and arrived[2] - arrived[1] >= 0.04
        assert 0.39 <= ended - arrived[-1] < 2 and ended - started < 5
        deadline = time.monotonic() + 2
        while server._tasks and time.monotonic() < deadline:  # the server lets go of the abandoned stream
            time.sleep(0.01)
        assert not server._tasks
        fast = openai.OpenAI(base_url=server.url, api_key="sk-local", max_retries=0, timeout=1.0)
        assert fast.chat.completions.create(model=MODEL, messages=HELLO).choices[0].message.content == WHOLE


def test_over_http_a_short_stall_delays_the_stream_and_it_completes() -> None:
    fault = {"kind": "slow_stream", "first_token_seconds": 0.05, "chunk_seconds": 0.01, "stall_after": 1,
             "stall_seconds": 0.2}
    with serve(SimProvider({"faults": [fault]})) as server:
        client = openai.OpenAI(base_url=server.url, api_key="sk-local", max_retries=0, timeout=1.0)
        replies = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
        arrived = [(time.monotonic(), text(chunk)) for chunk in replies]
    assert "".join(piece for _, piece in arrived) == WHOLE
    assert arrived[2][0] - arrived[1][0] >= 0.19  # the stall, after the first content chunk
