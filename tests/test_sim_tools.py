"""Tool calling and per-key rate-limit headers at the simulated provider, through the real openai
SDK: sync and async in-process on a virtual clock, and over HTTP with `serve`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import jsonschema
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.clock import VirtualClock
from course_lib.llm import SIM_BASE_URL, make_async_client, make_client
from course_lib.sim import FaultPlanError, SimProvider, SimTransport, count_prompt_tokens, count_tokens
from course_lib.sim.provider import duration
from course_lib.sim.server import serve
from course_lib.sim.tools import tool_calls_for

ORDER = {"type": "function", "function": {
    "name": "lookup_order", "description": "Look up an order by its number: status and delivery date.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"],
                   "additionalProperties": False},
    "strict": True}}
POLICY = {"type": "function", "function": {
    "name": "read_refund_policy", "description": "The refund policy of a country.",
    "parameters": {"type": "object", "properties": {"country": {"type": "string", "enum": ["PT", "US", "JP"]}},
                   "required": ["country"]}}}
WEATHER = {"type": "function", "function": {
    "name": "weather_now", "description": "Current weather at a parcel's delivery address.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
TOOLS = [ORDER, POLICY]
ASK = [{"role": "system", "content": "You are a support assistant."},
       {"role": "user", "content": "Where is my order 4471?"}]
RESULT = {"order_id": "4471", "status": "shipped", "eta": "2026-01-05"}
MODEL = "gpt-4o-mini"


def sim(plan: dict[str, Any] | None = None, seed: int = 0) -> tuple[openai.OpenAI, SimProvider, VirtualClock]:
    clock = VirtualClock()
    provider = SimProvider({"seed": seed, **(plan or {})}, clock=clock)
    return make_client(provider), provider, clock


def schema_of(name: str, tools: list[dict[str, Any]]) -> dict[str, Any]:
    return next(t["function"]["parameters"] for t in tools if t["function"]["name"] == name)


def assert_valid_calls(calls: Any, tools: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(name, arguments) of each call, after checking its id and its arguments against the schema."""
    found = []
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_sim_") and len(call.id) == 29
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, schema_of(call.function.name, tools))
        found.append((call.function.name, arguments))
    return found


def triples(calls: Any) -> list[tuple[str, str, str]]:
    return [(call.id, call.function.name, call.function.arguments) for call in calls]


def answered(messages: list[dict[str, Any]], reply: Any, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation with the assistant's tool calls and one tool message per call."""
    message = reply.choices[0].message
    return [*messages, message.model_dump(exclude_none=True),
            *({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)} for call in message.tool_calls)]


# --- the tool loop -----------------------------------------------------------------------------------
def test_a_two_step_tool_loop_calls_the_matching_tool_then_reports_its_result() -> None:
    client, provider, _ = sim()
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert assert_valid_calls(choice.message.tool_calls, TOOLS) == [("lookup_order", {"order_id": "4471"})]
    call = choice.message.tool_calls[0]
    call_tokens = count_tokens("lookup_order", MODEL) + count_tokens(call.function.arguments, MODEL)
    assert first.usage.completion_tokens == call_tokens

    conversation = answered(ASK, first, RESULT)
    final = client.chat.completions.create(model=MODEL, messages=conversation, tools=TOOLS)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.tool_calls is None
    text = final.choices[0].message.content
    assert 'the status is "shipped"' in text and "lookup_order" in text
    assert final.usage.completion_tokens == count_tokens(text, MODEL)
    assert final.usage.prompt_tokens == count_prompt_tokens(conversation, MODEL) + call_tokens
    assert [(c.status, c.completion_tokens) for c in provider.log] == [
        (200, first.usage.completion_tokens), (200, final.usage.completion_tokens)]


def test_the_async_client_runs_the_same_loop_with_the_same_replies() -> None:
    client, _, _ = sim()
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    final = client.chat.completions.create(model=MODEL, messages=answered(ASK, first, RESULT), tools=TOOLS)

    async def loop() -> tuple[Any, Any]:
        aclient = make_async_client(SimProvider({"seed": 0}, clock=VirtualClock()))
        one = await aclient.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
        two = await aclient.chat.completions.create(model=MODEL, messages=answered(ASK, one, RESULT), tools=TOOLS)
        return one, two

    one, two = asyncio.run(loop())
    assert one.choices[0].message.tool_calls == first.choices[0].message.tool_calls
    assert two.choices[0].message.content == final.choices[0].message.content


def test_the_loop_and_a_streamed_call_over_http() -> None:
    with serve(SimProvider({"seed": 4})) as server:
        client = openai.OpenAI(base_url=server.url, api_key="sk-local", max_retries=0, timeout=5)
        first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
        calls = assert_valid_calls(first.choices[0].message.tool_calls, TOOLS)
        assert calls == [("lookup_order", {"order_id": "4471"})]
        final = client.chat.completions.create(model=MODEL, messages=answered(ASK, first, RESULT), tools=TOOLS)
        assert '"shipped"' in final.choices[0].message.content
        with client.chat.completions.stream(model=MODEL, messages=ASK, tools=TOOLS) as stream:
            streamed = stream.get_final_completion()
        assert triples(streamed.choices[0].message.tool_calls) == triples(first.choices[0].message.tool_calls)
        assert streamed.choices[0].message.tool_calls[0].function.parsed_arguments == {"order_id": "4471"}  # strict
        assert streamed.choices[0].finish_reason == "tool_calls"


def test_calls_and_final_text_are_deterministic_per_seed() -> None:
    def run(seed: int) -> tuple[list[Any], str]:
        client, _, _ = sim(seed=seed)
        first = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "refund?"}],
                                               tools=[WEATHER, POLICY])
        final = client.chat.completions.create(model=MODEL, tools=[WEATHER, POLICY],
                                               messages=answered([{"role": "user", "content": "refund?"}], first,
                                                                 {"policy": "30 days"}))
        return [c.model_dump() for c in first.choices[0].message.tool_calls], final.choices[0].message.content

    assert run(3) == run(3)
    assert run(3)[0][0]["id"] != run(4)[0][0]["id"]
    assert [c["function"]["name"] for c in run(3)[0]] == ["read_refund_policy"]
    assert '"30 days"' in run(3)[1]


# --- which tool, and arguments ---------------------------------------------------------------------
def calls_for(content: str, tools: list[dict[str, Any]], **options: Any) -> list[tuple[str, Any]]:
    client, _, _ = sim()
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                           tools=tools, **options)
    assert reply.choices[0].finish_reason == "tool_calls"
    return assert_valid_calls(reply.choices[0].message.tool_calls, tools)


def test_tool_choice_none_answers_in_text_exactly_as_without_tools() -> None:
    client, _, _ = sim()
    plain = client.chat.completions.create(model=MODEL, messages=ASK)
    none = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none")
    assert none.choices[0].finish_reason == "stop" and none.choices[0].message.tool_calls is None
    assert none.choices[0].message.content == plain.choices[0].message.content
    assert none.usage == plain.usage


@pytest.mark.parametrize(("content", "options", "expected"), [
    ("Where is my order 4471?", {}, ["lookup_order"]),
    ("Hello there", {}, ["lookup_order"]),  # nothing matches: the first tool
    ("Hello there", {"tool_choice": "required"}, ["lookup_order"]),
    ("Where is my order 4471?", {"tool_choice": {"type": "function", "function": {"name": "read_refund_policy"}}},
     ["read_refund_policy"]),
    ("My order 4471 needs a refund", {}, ["lookup_order", "read_refund_policy"]),  # both named: parallel calls
    ("My order 4471 needs a refund", {"parallel_tool_calls": False}, ["lookup_order"]),
])
def test_the_tool_called_follows_tool_choice_and_the_users_words(content: str, options: dict[str, Any],
                                                                  expected: list[str]) -> None:
    assert [name for name, _ in calls_for(content, TOOLS, **options)] == expected


def test_a_description_decides_when_no_name_matches() -> None:
    # "delivery" is in both descriptions, "address" only in the weather tool's
    assert [name for name, _ in calls_for("Is it raining at my delivery address?", [ORDER, WEATHER])] == ["weather_now"]
    assert [name for name, _ in calls_for("Is the delivery late?", [WEATHER, ORDER])] == ["weather_now"]  # a tie: first


def test_arguments_reuse_the_users_values_where_the_schema_allows() -> None:
    tool = {"type": "function", "function": {"name": "open_ticket", "parameters": {
        "type": "object", "additionalProperties": False,
        "required": ["order_number", "email", "priority", "ref", "question", "count"],
        "properties": {"order_number": {"type": "integer", "minimum": 1},
                       "email": {"type": "string", "format": "email"},
                       "priority": {"type": "string", "enum": ["low", "urgent"]},
                       "ref": {"type": "string", "maxLength": 3},
                       "question": {"type": "string"},
                       "count": {"type": "integer", "maximum": 5}}}}}
    message = "Order 4471 is late, it is urgent! Write to ana.silva@example.com"
    [(name, arguments)] = calls_for(message, [tool])
    assert name == "open_ticket"
    assert arguments["order_number"] == 4471 and arguments["email"] == "ana.silva@example.com"
    assert arguments["priority"] == "urgent" and arguments["question"] == message
    assert len(arguments["ref"]) <= 3 and arguments["count"] <= 5  # the order number fits neither


@pytest.mark.parametrize("parameters", [
    {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {
        "sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["sku", "qty"]},
        "minItems": 1}}, "required": ["items"]},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date"},
                                      "order_id": {"type": ["string", "null"], "pattern": "^ORD-"}},
     "required": ["when", "order_id"]},
    {"type": "object", "$defs": {"money": {"type": "number", "minimum": 0, "maximum": 500}},
     "properties": {"amount": {"$ref": "#/$defs/money"}, "reason": {"type": "string", "minLength": 5}},
     "required": ["amount", "reason"]},
    {"type": "object", "properties": {}},
])
def test_arguments_are_valid_for_assorted_schemas(parameters: dict[str, Any]) -> None:
    tool = {"type": "function", "function": {"name": "do_it", "parameters": parameters}}
    for seed in range(5):
        client, _, _ = sim(seed=seed)
        reply = client.chat.completions.create(model=MODEL, tools=[tool],
                                               messages=[{"role": "user", "content": f"Order 4471, case {seed}"}])
        assert len(assert_valid_calls(reply.choices[0].message.tool_calls, [tool])) == 1


PICKY = {"type": "object", "required": ["order_id", "ticket_no", "email", "kind", "query"], "properties": {
    "order_id": {"type": "string", "minLength": 4, "maxLength": 5},
    "ticket_no": {"type": "integer", "minimum": 100, "maximum": 999},
    "email": {"type": "string", "format": "email", "maxLength": 24},
    "kind": {"type": "string", "enum": ["refund", "return", "Other"]},
    "query": {"type": "string", "maxLength": 30}}}
WORDS = st.sampled_from(["order", "4471", "#123", "ORD-99812", "ab@cd.io", "long.name@example.com", "refund",
                         "RETURN", "other", "ticket", "12", "hello", "?", "\u00e9t\u00e9", "-7", "1000"])


@settings(max_examples=150, deadline=None)
@given(st.lists(WORDS, max_size=8), st.integers(0, 3))
def test_arguments_taken_from_any_message_stay_valid_for_a_picky_schema(words: list[str], seed: int) -> None:
    request = {"messages": [{"role": "user", "content": " ".join(words)}],
               "tools": [{"type": "function", "function": {"name": "file_case", "parameters": PICKY}}]}
    [call] = tool_calls_for(seed, MODEL, request)
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, PICKY)
    fitting = [w for w in words if w in ("4471", "1000")]  # the identifiers of 4 or 5 characters
    if fitting:
        assert arguments["order_id"] == fitting[0]
    if "#123" in words:
        assert arguments["ticket_no"] == 123
    emails = [w for w in words if "@" in w]
    if emails:
        assert arguments["email"] == emails[0]
    kinds = [k for k in PICKY["properties"]["kind"]["enum"] if k.casefold() in {w.casefold() for w in words}]
    if kinds:
        assert arguments["kind"] == kinds[0]


def test_a_tool_without_parameters_gets_empty_arguments() -> None:
    tool = {"type": "function", "function": {"name": "ping"}}
    client, _, _ = sim()
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[tool])
    assert reply.choices[0].message.tool_calls[0].function.arguments == "{}"


def test_a_forced_choice_calls_again_after_tool_results_and_auto_answers() -> None:
    client, _, _ = sim()
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    conversation = answered(ASK, first, RESULT)
    again = client.chat.completions.create(model=MODEL, messages=conversation, tools=TOOLS, tool_choice="required")
    assert again.choices[0].finish_reason == "tool_calls"
    done = client.chat.completions.create(model=MODEL, messages=conversation, tools=TOOLS, tool_choice="auto")
    assert done.choices[0].finish_reason == "stop"
    bare = client.chat.completions.create(model=MODEL, messages=conversation)  # tools no longer offered
    assert bare.choices[0].message.content == done.choices[0].message.content


def test_a_plain_text_tool_result_is_quoted_and_several_results_are_all_reported() -> None:
    client, _, _ = sim()
    first = client.chat.completions.create(model=MODEL, tools=TOOLS,
                                           messages=[{"role": "user", "content": "My order 4471 needs a refund"}])
    calls = first.choices[0].message.tool_calls
    conversation = [{"role": "user", "content": "My order 4471 needs a refund"}, first.choices[0].message.model_dump(),
                    {"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps({"id": 4471, "state": "late"})},
                    {"role": "tool", "tool_call_id": calls[1].id,
                     "content": "Refunds are paid within 14 days. Shipping costs are not refunded, except when the "
                                "item arrived damaged."}]
    text = client.chat.completions.create(model=MODEL, messages=conversation).choices[0].message.content
    assert 'the state is "late"' in text and '"Refunds are paid within 14 days."' in text  # not the id, first sentence
    assert "4471" not in text and "Shipping costs" not in text


def test_max_tokens_cuts_the_arguments_and_finishes_with_length() -> None:
    client, _, _ = sim()
    whole = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    cut = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=5)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 5
    arguments = cut.choices[0].message.tool_calls[0].function.arguments
    assert whole.choices[0].message.tool_calls[0].function.arguments.startswith(arguments) and len(arguments) > 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(arguments)


def test_output_faults_leave_tool_calls_alone_but_change_the_final_answer() -> None:
    client, provider, _ = sim({"faults": [{"kind": "refusal"}]})
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    assert first.choices[0].finish_reason == "tool_calls" and first.choices[0].message.refusal is None
    final = client.chat.completions.create(model=MODEL, messages=answered(ASK, first, RESULT), tools=TOOLS)
    assert final.choices[0].message.content is None and final.choices[0].message.refusal
    assert [c.fault for c in provider.log] == [None, "refusal"]


# --- streaming ------------------------------------------------------------------------------------------
def test_streamed_calls_rebuild_the_same_calls_from_their_deltas() -> None:
    client, _, _ = sim()
    question = [{"role": "user", "content": "My order 4471 needs a refund"}]
    whole = client.chat.completions.create(model=MODEL, messages=question, tools=TOOLS)
    chunks = list(client.chat.completions.create(model=MODEL, messages=question, tools=TOOLS, stream=True,
                                                 stream_options={"include_usage": True}))
    built: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = built.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += (delta.function.name or "") if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    expected = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                for c in whole.choices[0].message.tool_calls]
    assert [built[i] for i in sorted(built)] == expected and len(expected) == 2
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(pieces) > 2 and pieces[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage == whole.usage


def test_the_async_stream_helper_rebuilds_the_calls() -> None:
    async def run() -> Any:
        aclient = make_async_client(SimProvider({}, clock=VirtualClock()))
        async with aclient.chat.completions.stream(model=MODEL, messages=ASK, tools=TOOLS) as stream:
            return await stream.get_final_completion()

    final = asyncio.run(run())
    client, _, _ = sim()
    whole = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    assert triples(final.choices[0].message.tool_calls) == triples(whole.choices[0].message.tool_calls)


# --- refusals -------------------------------------------------------------------------------------------
def bad_request(**body: Any) -> openai.BadRequestError:
    client, provider, _ = sim()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{"model": MODEL, "messages": ASK, **body})
    assert [c.status for c in provider.log] == [400]
    return caught.value


def function(**fields: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "lookup_order", **fields}}


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"tools": []}, "tools", "empty array"),
    ({"tools": {"a": 1}}, "tools", "expected an array"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type", "only 'function'"),
    ({"tools": [{"type": "function"}]}, "tools[0].function", "Missing required"),
    ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "tools[0].function.name", "Missing required"),
    ({"tools": [ORDER, {"type": "function", "function": {"name": "look up"}}]}, "tools[1].function.name",
     "1 to 64 characters"),
    ({"tools": [function(parameters="{}")]}, "tools[0].function.parameters", "expected an object"),
    ({"tools": [function(parameters={"type": "string"})]}, "tools[0].function.parameters", "root must be"),
    ({"tools": [function(strict=True, parameters={"type": "object", "properties": {"a": {"type": "string"}}})]},
     "tools[0].function.parameters", "additionalProperties"),
    ({"tools": [function(strict="yes")]}, "tools[0].function.strict", "expected a boolean"),
    ({"tools": [function(examples=[])]}, "tools[0].function.examples", "Unrecognized"),
    ({"tools": [function(parameters={"type": "object", "properties": {"a": {"$ref": "#/nowhere"}},
                                     "required": ["a"]})]}, "tools[0].function.parameters", "does not resolve"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "'required'"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "cancel_order"}}},
     "tool_choice.function.name", "not among the tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice.function", "Missing required"),
    ({"tool_choice": "auto"}, "tool_choice", "only allowed when 'tools'"),
    ({"parallel_tool_calls": True}, "parallel_tool_calls", "only allowed when 'tools'"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls", "expected a boolean"),
])
def test_bad_tool_shapes_get_a_400_naming_the_field(body: dict[str, Any], param: str, words: str) -> None:
    error = bad_request(**body)
    assert error.param == param and words in error.message


CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}}


@pytest.mark.parametrize(("messages", "param", "words"), [
    ([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_1", "content": "{}"}],
     "messages[1].role", "must answer a tool call"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
      {"role": "tool", "tool_call_id": "call_2", "content": "{}"}], "messages[2].tool_call_id", "'call_2'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
      {"role": "user", "content": "well?"}], "messages[1].tool_calls", "none answers call_1"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [CALL]}],
     "messages[1].tool_calls", "none answers call_1"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
      {"role": "tool", "tool_call_id": "call_1", "content": "{}"}, {"role": "assistant", "content": "ok"},
      {"role": "tool", "tool_call_id": "call_1", "content": "{}"}], "messages[4].role", "must answer a tool call"),
    ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}], "messages[1].tool_call_id",
     "Missing required"),
    ([{"role": "user", "content": "hi", "tool_calls": [CALL]}], "messages[0].tool_calls", "only assistant"),
    ([{"role": "assistant", "content": None, "tool_calls": []}], "messages[0].tool_calls", "empty array"),
    ([{"role": "assistant", "content": None, "tool_calls": [{**CALL, "function": {"name": "x", "arguments": {}}}]}],
     "messages[0].tool_calls[0].function.arguments", "expected a string"),
    ([{"role": "assistant", "content": None, "tool_calls": [{**CALL, "type": "custom"}]}],
     "messages[0].tool_calls[0].type", "expected 'function'"),
])
def test_tool_turns_that_do_not_pair_up_get_a_400(messages: list[dict[str, Any]], param: str, words: str) -> None:
    error = bad_request(messages=messages)
    assert error.param == param and words in error.message


def test_a_paired_history_with_null_assistant_content_is_accepted_without_tools() -> None:
    client, _, _ = sim()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": '{"status": "lost"}'}]}]
    reply = client.chat.completions.create(model=MODEL, messages=messages)
    assert 'the status is "lost"' in reply.choices[0].message.content


# --- x-ratelimit headers -----------------------------------------------------------------------------
LIMITS = {"requests_per_minute": 60, "tokens_per_minute": 1000}
SHORT = [{"role": "user", "content": "Hi"}]


def limits(headers: Any) -> dict[str, str]:
    return {k.removeprefix("x-ratelimit-"): v for k, v in headers.items() if k.startswith("x-ratelimit-")}


def keyed(provider: SimProvider, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=SIM_BASE_URL, max_retries=0,
                         http_client=httpx2.Client(transport=SimTransport(provider)))


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.02, "20ms"), (0.0004, "1ms"), (1, "1s"), (1.5, "1.5s"), (59.999, "59.999s"), (60, "1m0s"),
    (360, "6m0s"), (90.25, "1m30.25s"), (3600, "1h0m0s"), (3725, "1h2m5s")])
def test_reset_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_every_reply_to_a_covered_key_carries_the_headers_and_remaining_goes_down() -> None:
    client, _, _ = sim({"key_limits": LIMITS})
    prompt = count_prompt_tokens(SHORT, MODEL)
    seen = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=SHORT, max_tokens=20)
        seen.append(limits(raw.headers))
    assert [s["remaining-requests"] for s in seen] == ["59", "58", "57"]
    assert [int(s["remaining-tokens"]) for s in seen] == [1000 - n * (prompt + 20) for n in (1, 2, 3)]
    assert seen[0] == {"limit-requests": "60", "limit-tokens": "1000", "remaining-requests": "59",
                       "remaining-tokens": str(1000 - prompt - 20), "reset-requests": "1s",
                       "reset-tokens": duration((prompt + 20) * 60 / 1000)}
    assert seen[2]["reset-requests"] == "3s"


def test_the_real_completion_is_charged_when_max_tokens_is_not_set() -> None:
    client, _, _ = sim({"key_limits": LIMITS})
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=SHORT)
    usage = raw.parse().usage
    assert int(limits(raw.headers)["remaining-tokens"]) == 1000 - usage.total_tokens


def test_buckets_refill_over_the_minute_on_the_providers_clock() -> None:
    client, _, clock = sim({"key_limits": {"requests_per_minute": 6, "tokens_per_minute": 100_000}})
    for _ in range(6):
        client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=5)
    clock.sleep(25)  # 2.5 requests come back
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=SHORT, max_tokens=5)
    assert limits(raw.headers)["remaining-requests"] == "1" and limits(raw.headers)["reset-requests"] == "45s"
    clock.sleep(600)
    assert limits(client.chat.completions.with_raw_response.create(
        model=MODEL, messages=SHORT, max_tokens=5).headers)["remaining-requests"] == "5"


def test_an_exhausted_key_gets_a_429_with_retry_after_and_the_headers() -> None:
    client, provider, clock = sim({"key_limits": {"requests_per_minute": 2, "tokens_per_minute": 1000}})
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=5)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=5)
    error = caught.value
    assert error.code == "rate_limit_exceeded" and error.type == "requests" and "30s" in error.message
    headers = error.response.headers
    assert headers["retry-after"] == "30" and headers["retry-after-ms"] == "30000"
    assert limits(headers)["remaining-requests"] == "0" and limits(headers)["reset-requests"] == "1m0s"
    assert [(c.status, c.fault) for c in provider.log][-1] == (429, "key_limits")
    with pytest.raises(openai.RateLimitError):  # a refusal takes nothing: still 30 s to wait
        client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=5)
    clock.sleep(30)
    after = client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=5)
    assert after.choices[0].finish_reason == "length"


def test_a_token_shortfall_and_a_request_too_large_are_refused_differently() -> None:
    client, _, _ = sim({"key_limits": LIMITS})
    prompt = count_prompt_tokens(SHORT, MODEL)
    client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=900 - prompt)
    with pytest.raises(openai.RateLimitError) as short:
        client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=200 - prompt)  # 100 left, 200 wanted
    assert short.value.type == "tokens" and short.value.response.headers["retry-after-ms"] == "6000"
    with pytest.raises(openai.RateLimitError) as large:
        client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=1001 - prompt)
    assert "Request too large" in large.value.message and "retry-after" not in large.value.response.headers
    assert limits(large.value.response.headers)["remaining-tokens"] == "100"


def test_keys_are_counted_apart_and_only_covered_keys_get_headers() -> None:
    provider = SimProvider({"key_limits": {**LIMITS, "requests_per_minute": 1, "keys": ["key-a", "key-b"]}},
                           clock=VirtualClock())
    alice, bob, carol = keyed(provider, "key-a"), keyed(provider, "key-b"), keyed(provider, "key-c")
    alice.chat.completions.create(model=MODEL, messages=SHORT)
    with pytest.raises(openai.RateLimitError):
        alice.chat.completions.create(model=MODEL, messages=SHORT)
    raw = bob.chat.completions.with_raw_response.create(model=MODEL, messages=SHORT)
    assert limits(raw.headers)["remaining-requests"] == "0" and raw.parse().choices
    for _ in range(3):
        raw = carol.chat.completions.with_raw_response.create(model=MODEL, messages=SHORT)
        assert limits(raw.headers) == {}


def test_errors_and_faults_for_a_covered_key_carry_the_headers_too() -> None:
    client, _, _ = sim({"key_limits": LIMITS, "faults": [{"kind": "outage", "start": 0, "end": 1}]})
    with pytest.raises(openai.InternalServerError) as outage:
        client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=10)
    assert limits(outage.value.response.headers)["remaining-requests"] == "59"  # admitted, then the outage
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=SHORT, temperature=5)
    assert limits(bad.value.response.headers)["remaining-requests"] == "59"  # refused before counting


def test_without_key_limits_no_ratelimit_header_is_sent() -> None:
    client, _, _ = sim()
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=SHORT)
    assert limits(raw.headers) == {}


def test_the_headers_cross_real_http_and_reach_an_async_client() -> None:
    async def run(url: str) -> list[dict[str, str]]:
        aclient = openai.AsyncOpenAI(base_url=url, api_key="sk-a", max_retries=0, timeout=5)
        seen = []
        for _ in range(2):
            raw = await aclient.chat.completions.with_raw_response.create(model=MODEL, messages=SHORT, max_tokens=5)
            seen.append(limits(raw.headers))
        return seen

    with serve(SimProvider({"key_limits": {"requests_per_minute": 600, "tokens_per_minute": 100_000}})) as server:
        seen = asyncio.run(run(server.url))
    assert [s["remaining-requests"] for s in seen] == ["599", "598"]
    assert all(s["limit-tokens"] == "100000" for s in seen)


@pytest.mark.parametrize(("limits_", "words"), [
    ({"requests_per_minute": 0, "tokens_per_minute": 10}, "key_limits.requests_per_minute"),
    ({"requests_per_minute": 10}, "key_limits.tokens_per_minute"),
    ({"requests_per_minute": 1, "tokens_per_minute": 10, "keys": []}, "key_limits.keys"),
    ({"requests_per_minute": 1, "tokens_per_minute": 10, "burst": 3}, "key_limits.burst"),
])
def test_a_bad_key_limits_entry_is_refused_naming_the_field(limits_: dict[str, Any], words: str) -> None:
    with pytest.raises(FaultPlanError, match=words.replace(".", r"\.")):
        SimProvider({"key_limits": limits_})
