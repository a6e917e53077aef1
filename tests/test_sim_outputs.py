"""The simulator's outputs: moderations, structured outputs, bad-output faults and reply text,
through the real openai SDK, in-process (virtual clock) and over real HTTP."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, Literal

import jsonschema
import openai
import phonenumbers
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib import type_to_response_format_param  # what .parse() sends
from openai.types.moderation import CategoryScores

from course_lib.clock import VirtualClock
from course_lib.llm import make_client
from course_lib.sim import (
    FaultPlan,
    FaultPlanError,
    SimProvider,
    count_prompt_tokens,
    count_tokens,
)
from course_lib.sim.content import planted_for
from course_lib.sim.moderation import CATEGORIES, PHRASES
from course_lib.sim.server import serve

ASK = [{"role": "user", "content": "Where is my refund? Please answer in JSON."}]
Connect = Callable[..., tuple[openai.OpenAI, SimProvider]]


@pytest.fixture(params=["in-process", "http"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """A factory of (client, provider) for a fault list: in-process, or over a real HTTP server."""
    with ExitStack() as stack:
        def make(faults: list[dict[str, Any]] | None = None, seed: int = 0) -> tuple[openai.OpenAI, SimProvider]:
            plan = {"seed": seed, "faults": faults or []}
            if request.param == "in-process":
                provider = SimProvider(plan, clock=VirtualClock())
                return make_client(provider), provider
            provider = SimProvider(plan)
            server = stack.enter_context(serve(provider))
            return openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=5), provider

        yield make


def local(faults: list[dict[str, Any]] | None = None, seed: int = 0) -> tuple[openai.OpenAI, SimProvider]:
    provider = SimProvider({"seed": seed, "faults": faults or []}, clock=VirtualClock())
    return make_client(provider), provider


class Answer(pydantic.BaseModel):
    answer: str
    confidence: int
    tags: list[str]


class StrictAnswer(Answer):
    model_config = pydantic.ConfigDict(extra="forbid")


class Priority(enum.Enum):
    low = "low"
    normal = "normal"
    urgent = "urgent"


class Address(pydantic.BaseModel):
    street: str
    city: str
    postcode: str | None


class Line(pydantic.BaseModel):
    sku: str = pydantic.Field(min_length=3, max_length=12)
    quantity: int = pydantic.Field(ge=1, le=9)
    price: float = pydantic.Field(ge=0, le=500)


class Ticket(pydantic.BaseModel):
    customer_name: str
    email: str
    priority: Priority
    channel: Literal["email", "chat", "phone"]
    address: Address
    lines: list[Line] = pydantic.Field(min_length=1, max_length=4)
    previous: Address | None
    refund_due: float | None
    escalate: bool
    summary: str


class Category(pydantic.BaseModel):
    name: str
    children: list[Category]


def scores_by_name(result: Any) -> dict[str, float]:
    return result.category_scores.model_dump(by_alias=True)  # type: ignore[no-any-return]


def flagged_names(result: Any) -> set[str]:
    return {name for name, on in result.categories.model_dump(by_alias=True).items() if on}


# --- moderations ------------------------------------------------------------------------------
def test_a_threat_is_flagged_in_its_categories_and_a_question_is_not(connect: Connect) -> None:
    client, provider = connect()
    reply = client.moderations.create(input=["I will KILL   you", "Where is my parcel?"])
    threat, question = reply.results
    assert reply.id == "modr-sim-1" and reply.model == "omni-moderation-latest"
    assert threat.flagged and flagged_names(threat) == {"harassment", "harassment/threatening", "violence"}
    assert all(0.8 <= scores_by_name(threat)[name] <= 0.99 for name in flagged_names(threat))
    assert max(v for k, v in scores_by_name(threat).items() if k not in flagged_names(threat)) < 0.05
    assert not question.flagged and max(scores_by_name(question).values()) < 0.05
    assert threat.category_applied_input_types.violence == ["text"]
    assert [(c.model, c.status) for c in provider.log] == [("omni-moderation-latest", 200)]
    assert provider.calls(model="omni-moderation-latest") == 1


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_has_a_phrase_that_flags_it(category: str) -> None:
    client, _ = local()
    result = client.moderations.create(input=f"Someone wrote: {PHRASES[category][0].upper()}!").results[0]
    assert result.flagged and category in flagged_names(result)


def test_the_thirteen_categories_are_the_sdks() -> None:
    aliases = {field.alias or name for name, field in CategoryScores.model_fields.items()}
    assert set(CATEGORIES) == aliases and len(CATEGORIES) == 13


@pytest.mark.parametrize(("text", "flagged"), [
    ("\uff4b\uff49\uff4c\uff4c \uff59\uff4f\uff55", True),  # fullwidth letters, folded by NFKC
    ("k\u200bill you", True),  # a zero-width space inside the word
    ("Kill\nyou", True),
    ("That skill you have is great", False),  # whole words only
    ("The price is stable", False),  # "stab" is not in "stable"
])
def test_matching_is_whole_word_after_normalising(text: str, flagged: bool) -> None:
    client, _ = local()
    assert client.moderations.create(input=text).results[0].flagged is flagged


def test_scores_are_stable_and_text_parts_and_the_legacy_model_work() -> None:
    client, _ = local()
    first = client.moderations.create(input="how to make a bomb", model="text-moderation-latest")
    again = client.moderations.create(input=[{"type": "text", "text": "How to make a bomb"}])
    assert first.model == "text-moderation-latest"
    assert scores_by_name(first.results[0]) == scores_by_name(again.results[0])
    assert flagged_names(first.results[0]) == {"illicit", "illicit/violent", "violence"}


@pytest.mark.parametrize(("body", "status", "param"), [
    ({}, 400, "input"),
    ({"input": []}, 400, "input"),
    ({"input": 5}, 400, "input"),
    ({"input": ""}, 400, "input[0]"),
    ({"input": ["fine", 7]}, 400, "input[1]"),
    ({"input": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}, 400, "input[0]"),
    ({"input": "hi", "model": "gpt-4o"}, 404, None),
    ({"input": "hi", "model": "omni-moderation-2099"}, 404, None),
    ({"input": "hi", "threshold": 0.5}, 400, None),
])
def test_malformed_moderation_requests_get_errors_naming_the_field(body: dict[str, Any], status: int,
                                                                   param: str | None) -> None:
    reply = SimProvider().handle("POST", "/v1/moderations", {"authorization": "Bearer k"}, json.dumps(body).encode())
    error = json.loads(reply.body)["error"]
    assert (reply.status, error["param"]) == (status, param), error
    if body.get("input") and isinstance(body["input"], list) and isinstance(body["input"][0], dict):
        assert "not simulated" in error["message"]


def test_moderations_need_a_key() -> None:
    reply = SimProvider().handle("POST", "/v1/moderations", {}, b'{"input": "hi"}')
    assert reply.status == 401


@pytest.mark.parametrize(("fault", "error"), [({"kind": "outage"}, openai.InternalServerError),
                                              ({"kind": "rate_limit", "retry_after": 2}, openai.RateLimitError),
                                              ({"kind": "quota"}, openai.RateLimitError),
                                              ({"kind": "drop"}, openai.APIConnectionError)])
def test_transport_faults_apply_to_moderations(connect: Connect, fault: dict[str, Any], error: type) -> None:
    client, provider = connect([fault])
    with pytest.raises(error):
        client.moderations.create(input="hello")
    assert provider.log[-1].model == "omni-moderation-latest" and provider.log[-1].fault == fault["kind"]


def test_a_faults_models_decide_whether_it_covers_moderations() -> None:
    client, provider = local([{"kind": "outage", "models": ["gpt-4o"]},
                              {"kind": "rate_limit", "models": ["omni-moderation-latest"]}])
    with pytest.raises(openai.RateLimitError):
        client.moderations.create(input="hello")
    client.moderations.create(input="hello", model="text-moderation-latest")
    client.chat.completions.create(model="gpt-4o-mini", messages=ASK)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert [c.status for c in provider.log] == [429, 200, 200, 503]


def test_latency_hang_and_capacity_apply_to_moderations() -> None:
    clock = VirtualClock()
    provider = SimProvider({"faults": [{"kind": "latency", "seconds": 0.4}, {"kind": "capacity", "per_second": 1},
                                       {"kind": "hang", "start": 5}]}, clock=clock)
    client = make_client(provider, timeout=2)
    client.moderations.create(input="hello")
    assert clock.now() == 0.4
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=ASK)  # the bucket is shared
    clock.advance(5)
    with pytest.raises(openai.APITimeoutError):
        client.moderations.create(input="hello")
    assert [c.fault for c in provider.log] == [None, "capacity", "hang"]


def test_output_faults_leave_moderations_alone_and_refuse_moderation_models() -> None:
    client, provider = local([{"kind": "leaky"}, {"kind": "refusal"}])
    assert not client.moderations.create(input="hello").results[0].flagged
    assert provider.log[-1].fault is None
    with pytest.raises(FaultPlanError, match=r"faults\[0\] \(refusal\): models: output faults change chat completions "
                                             r"only, not moderation model\(s\) \['omni-moderation-latest'\]"):
        FaultPlan.parse({"faults": [{"kind": "refusal", "models": ["omni-moderation-latest"]}]})


# --- structured outputs -----------------------------------------------------------------------
def test_json_object_needs_the_word_json_in_the_messages(connect: Connect) -> None:
    client, provider = connect()
    with pytest.raises(openai.BadRequestError, match="must contain the word 'json'") as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Refund?"}],
                                       response_format={"type": "json_object"})
    assert raised.value.param == "messages" and provider.log[-1].status == 400
    parts = [{"role": "system", "content": [{"type": "text", "text": "Answer in Json."}]},
             {"role": "user", "content": "Refund?"}]
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=parts, response_format={"type": "json_object"})
    value = json.loads(reply.choices[0].message.content or "")
    assert list(value) == ["answer"] and "refund" in value["answer"].lower()
    assert reply.usage.prompt_tokens == count_prompt_tokens(parts, "gpt-4o-mini")  # the messages only


def test_text_format_is_the_plain_reply() -> None:
    client, _ = local()
    plain = client.chat.completions.create(model="gpt-4o", messages=ASK)
    text = client.chat.completions.create(model="gpt-4o", messages=ASK, response_format={"type": "text"})
    assert plain.choices[0].message.content == text.choices[0].message.content


def schema_format(schema: dict[str, Any], strict: bool | None = True, name: Any = "reply") -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "schema": schema}
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


CLOSED = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}


@pytest.mark.parametrize(("response_format", "param", "message"), [
    ("json", "response_format", "expected an object, got a string"),
    ({}, "response_format.type", "Missing required parameter: 'response_format.type'"),
    ({"type": "xml"}, "response_format.type", "'xml'; supported values are 'text', 'json_object', 'json_schema'"),
    ({"type": "text", "json_schema": {}}, "response_format.json_schema", "Unrecognized argument"),
    ({"type": "json_schema"}, "response_format.json_schema", "Missing required parameter"),
    ({"type": "json_schema", "json_schema": {"schema": CLOSED}}, "response_format.json_schema.name", "Missing"),
    (schema_format(CLOSED, name="my reply"), "response_format.json_schema.name", "1 to 64 characters"),
    (schema_format(CLOSED, name="x" * 65), "response_format.json_schema.name", "1 to 64 characters"),
    (schema_format(CLOSED, strict="yes"),  # type: ignore[arg-type]
     "response_format.json_schema.strict", "expected a boolean"),
    ({"type": "json_schema", "json_schema": {"name": "r", "schema": [1]}}, "response_format.json_schema.schema",
     "expected an object"),
    ({"type": "json_schema", "json_schema": {"name": "r"}}, "response_format.json_schema.schema", "Missing"),
    ({"type": "json_schema", "json_schema": {"name": "r", "schema": CLOSED, "format": "x"}},
     "response_format.json_schema.format", "Unrecognized argument"),
])
def test_a_malformed_response_format_gets_a_400_naming_the_field(response_format: Any, param: str,
                                                                  message: str) -> None:
    client, _ = local()
    with pytest.raises(openai.BadRequestError, match=re.escape(message)) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=ASK, response_format=response_format)
    assert raised.value.param == param


@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "array", "items": {"type": "string"}}, "at #, the root must be of 'type: \"object\"', got 'array'"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
     "at #, 'additionalProperties' must be present and false"),
    ({**CLOSED, "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}},
     "at #, 'required' must list every key of 'properties' when 'strict' is true; missing ['b']"),
    ({**CLOSED, "properties": {"a": {"type": "object", "properties": {"c": {"type": "string"}}, "required": ["c"]}}},
     "at #/properties/a, 'additionalProperties' must be present and false"),
    ({**CLOSED, "properties": {"a": {"$ref": "#/$defs/Item"}},
      "$defs": {"Item": {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": False}}},
     "at #/$defs/Item, 'required' must list every key"),
    ({**CLOSED, "properties": {"a": {"type": "array", "items": {"type": "object", "properties": {}}}}},
     "at #/properties/a/items, 'additionalProperties'"),
])
def test_a_strict_schema_must_close_every_object_and_require_every_key(schema: dict[str, Any], message: str) -> None:
    client, provider = local()
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=ASK, response_format=schema_format(schema))
    assert raised.value.param == "response_format"
    said = raised.value.body["message"]  # type: ignore[index]
    assert said.startswith("Invalid schema for response_format 'reply': ") and message in said
    relaxed = schema_format(schema, strict=False)
    client.chat.completions.create(model="gpt-4o-mini", messages=ASK, response_format=relaxed)
    assert [c.status for c in provider.log] == [400, 200]  # the same schema is fine without strict


def test_a_schema_the_simulator_cannot_fill_is_a_400_not_a_crash() -> None:
    client, _ = local()
    for schema, message in (({"type": "object", "properties": {"a": {"$ref": "#/$defs/Nope"}}, "required": ["a"]},
                             "$ref '#/$defs/Nope' does not resolve"),
                            ({"$ref": "#"}, "recurses without a way to stop")):
        with pytest.raises(openai.BadRequestError, match=re.escape(message)) as raised:
            client.chat.completions.create(model="gpt-4o-mini", messages=ASK,
                                           response_format=schema_format(schema, None))
        assert raised.value.param == "response_format"


def test_parse_with_a_pydantic_model_returns_an_instance(connect: Connect) -> None:
    client, provider = connect()
    reply = client.chat.completions.parse(model="gpt-4o", messages=ASK, response_format=Ticket)
    ticket = reply.choices[0].message.parsed
    assert isinstance(ticket, Ticket) and isinstance(ticket.priority, Priority) and isinstance(ticket.address, Address)
    assert 1 <= len(ticket.lines) <= 4
    assert all(1 <= line.quantity <= 9 and 3 <= len(line.sku) <= 12 for line in ticket.lines)
    assert ticket.channel in ("email", "chat", "phone")
    assert reply.usage.prompt_tokens == count_prompt_tokens(ASK, "gpt-4o")  # schema tokens are not billed
    assert reply.usage.completion_tokens == count_tokens(reply.choices[0].message.content or "", "gpt-4o")
    assert provider.log[-1].status == 200


@pytest.mark.parametrize("model", [Answer, Ticket, Category, Address, Line])
def test_many_generated_replies_validate_against_their_schema(model: type[pydantic.BaseModel]) -> None:
    client, _ = local()
    validator = jsonschema.Draft202012Validator(model.model_json_schema())
    contents = set()
    for i in range(25):
        messages = [{"role": "user", "content": f"Question {i} about my order"}]
        reply = client.chat.completions.parse(model="gpt-4o-mini", messages=messages, response_format=model)
        content = reply.choices[0].message.content or ""
        validator.validate(json.loads(content))
        assert isinstance(reply.choices[0].message.parsed, model)
        contents.add(content)
    assert len(contents) >= 20  # the prompt changes the value


def test_a_recursive_model_stops_and_a_dict_field_is_refused_in_strict_mode() -> None:
    client, _ = local()
    tree = client.chat.completions.parse(model="gpt-4o-mini", messages=ASK, response_format=Category)
    assert isinstance(tree.choices[0].message.parsed, Category)

    class Totals(pydantic.BaseModel):
        per_day: dict[str, int]

    with pytest.raises(openai.BadRequestError, match=r"at #/properties/per_day, 'additionalProperties' must be"):
        client.chat.completions.parse(model="gpt-4o-mini", messages=ASK, response_format=Totals)


def test_structured_replies_are_deterministic_per_seed() -> None:
    def content(seed: int) -> str:
        reply = local(seed=seed)[0].chat.completions.parse(model="gpt-4o", messages=ASK, response_format=Ticket)
        return reply.choices[0].message.content or ""

    assert content(1) == content(1) != content(2)


def test_max_tokens_cuts_the_json_and_parse_raises_length(connect: Connect) -> None:
    client, _ = connect()
    whole = client.chat.completions.parse(model="gpt-4o", messages=ASK, response_format=Ticket)
    cut = client.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=12,
                                         response_format=type_to_response_format_param(Ticket))
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 12
    assert (whole.choices[0].message.content or "").startswith(cut.choices[0].message.content or "-")
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="gpt-4o", messages=ASK, response_format=Ticket, max_tokens=12)


def test_streaming_a_structured_reply_gives_the_same_json(connect: Connect) -> None:
    client, _ = connect()
    response_format = type_to_response_format_param(Answer)
    whole = client.chat.completions.create(model="gpt-4o", messages=ASK, response_format=response_format)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=ASK, response_format=response_format,
                                                 stream=True))
    assert len(chunks) > 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content


# hypothesis: random small schemas --------------------------------------------------------------
LEAVES = st.one_of(
    st.builds(lambda low, extra: {"type": "string", "minLength": low, "maxLength": low + extra},
              st.integers(0, 20), st.integers(0, 30)),
    st.just({"type": "string"}),
    st.builds(lambda low, extra: {"type": "integer", "minimum": low, "maximum": low + extra},
              st.integers(-1000, 1000), st.integers(0, 50)),
    st.just({"type": "integer"}),
    st.just({"type": "boolean"}),
    st.just({"type": ["string", "null"]}),
    st.lists(st.text("abcxyz -", min_size=1, max_size=6), min_size=1, max_size=4, unique=True).map(
        lambda values: {"type": "string", "enum": values}),
)
NAMES = st.text("abcdefgh_", min_size=1, max_size=8)


def _object(children: st.SearchStrategy[dict[str, Any]], strict: bool) -> st.SearchStrategy[dict[str, Any]]:
    def build(fields: dict[str, dict[str, Any]], keep: list[bool]) -> dict[str, Any]:
        required = [name for name, flag in zip(fields, keep, strict=False) if flag or strict]
        return {"type": "object", "properties": fields, "required": required, "additionalProperties": False}

    return st.dictionaries(NAMES, children, min_size=1, max_size=4).flatmap(
        lambda fields: st.lists(st.booleans(), min_size=len(fields), max_size=len(fields)).map(
            lambda keep: build(fields, keep)))


def _schemas(strict: bool) -> st.SearchStrategy[dict[str, Any]]:
    def extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
        arrays = st.one_of(
            children.map(lambda items: {"type": "array", "items": items}),
            st.builds(lambda items, low, extra: {"type": "array", "items": items, "minItems": low,
                                                 "maxItems": low + extra},
                      children, st.integers(0, 3), st.integers(0, 3)))
        return st.one_of(arrays, _object(children, strict))

    return _object(st.recursive(LEAVES, extend, max_leaves=8), strict)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=_schemas(strict=False), strict=st.just(False), question=st.integers(0, 10**6))
def test_random_schemas_get_replies_that_validate(schema: dict[str, Any], strict: bool, question: int) -> None:
    _check_random_schema(schema, strict, question)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=_schemas(strict=True), question=st.integers(0, 10**6))
def test_random_strict_schemas_get_replies_that_validate(schema: dict[str, Any], question: int) -> None:
    _check_random_schema(schema, True, question)


SHARED = local()[0]  # one client for every example: the provider keeps no state that matters here


def _check_random_schema(schema: dict[str, Any], strict: bool, question: int) -> None:
    messages = [{"role": "user", "content": f"case {question}"}]
    reply = SHARED.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                           response_format=schema_format(schema, strict))
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.Draft202012Validator(schema).validate(json.loads(reply.choices[0].message.content or ""))


# --- output faults ----------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["fence", "trailing_comma", "unclosed", None])
def test_invalid_json_is_not_json_and_parse_raises(connect: Connect, style: str | None) -> None:
    client, provider = connect([{"kind": "invalid_json", "style": style}])
    for response_format in (None, {"type": "json_object"}):
        extra = {"response_format": response_format} if response_format else {}
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=ASK, **extra)  # type: ignore[arg-type]
        content = reply.choices[0].message.content or ""
        assert reply.choices[0].finish_reason == "stop"
        with pytest.raises(json.JSONDecodeError):
            json.loads(content)
        if style == "fence":
            assert content.startswith("Here is the JSON you asked for:\n```json\n{") and content.endswith("}\n```")
            assert json.loads(content.split("```json\n")[1].removesuffix("\n```"))["answer"]
    with pytest.raises(pydantic.ValidationError, match="json_invalid"):
        client.chat.completions.parse(model="gpt-4o-mini", messages=ASK, response_format=Answer)
    assert [c.fault for c in provider.log] == ["invalid_json"] * 3 and provider.calls(status=200) == 3


@pytest.mark.parametrize(("violation", "model", "error_type", "field"), [
    ("missing_field", Answer, "missing", "answer"),
    ("wrong_type", Answer, "string_type", "answer"),
    ("extra_field", StrictAnswer, "extra_forbidden", "internal_note"),
])
def test_a_schema_violation_makes_parse_name_the_field(connect: Connect, violation: str, model: type[Answer],
                                                       error_type: str, field: str) -> None:
    client, provider = connect([{"kind": "schema_violation", "violation": violation}])
    with pytest.raises(pydantic.ValidationError) as raised:
        client.chat.completions.parse(model="gpt-4o-mini", messages=ASK, response_format=model)
    assert [(e["type"], e["loc"]) for e in raised.value.errors()] == [(error_type, (field,))]
    assert provider.log[-1].fault == "schema_violation" and provider.log[-1].status == 200
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=ASK, response_format={"type": "json_object"})
    value = json.loads(reply.choices[0].message.content or "")  # valid JSON, broken like the schema one
    expected = {"missing_field": [], "wrong_type": ["answer"], "extra_field": ["answer", "internal_note"]}[violation]
    assert list(value) == expected
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(StrictAnswer.model_json_schema()).validate(value)


def test_an_extra_field_passes_a_model_that_ignores_extras() -> None:
    """The honest limit: pydantic drops unknown fields unless the model forbids them."""
    client, _ = local([{"kind": "schema_violation", "violation": "extra_field"}])
    reply = client.chat.completions.parse(model="gpt-4o-mini", messages=ASK, response_format=Answer)
    assert isinstance(reply.choices[0].message.parsed, Answer)
    assert "internal_note" in json.loads(reply.choices[0].message.content or "")


def test_truncated_cuts_to_half_or_to_max_tokens(connect: Connect) -> None:
    client, provider = connect([{"kind": "truncated"}])
    whole = local()[0].chat.completions.create(model="gpt-4o-mini", messages=ASK)
    cut = client.chat.completions.create(model="gpt-4o-mini", messages=ASK)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == whole.usage.completion_tokens // 2
    assert cut.usage.completion_tokens == count_tokens(cut.choices[0].message.content or "", "gpt-4o-mini")
    assert (whole.choices[0].message.content or "").startswith(cut.choices[0].message.content or "-")
    limited = client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=7)
    assert (limited.choices[0].finish_reason, limited.usage.completion_tokens) == ("length", 7)
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="gpt-4o-mini", messages=ASK, response_format=Ticket)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True))
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert [c.fault for c in provider.log] == ["truncated"] * 4


def test_refusal_fills_message_refusal_and_parse_gives_none(connect: Connect) -> None:
    client, provider = connect([{"kind": "refusal", "end": 1000}])
    reply = client.chat.completions.parse(model="gpt-4o-mini", messages=ASK, response_format=Ticket)
    message = reply.choices[0].message
    assert (message.content, message.parsed) == (None, None)
    assert message.refusal == "I'm sorry, but I can't help with that request."
    assert reply.usage.completion_tokens == count_tokens(message.refusal or "", "gpt-4o-mini")
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True))
    assert "".join(c.choices[0].delta.refusal or "" for c in chunks) == message.refusal
    assert all(not c.choices[0].delta.content for c in chunks)
    custom, _ = local([{"kind": "refusal", "message": "That is outside what I can discuss."}])
    assert custom.chat.completions.create(model="gpt-4o", messages=ASK).choices[0].message.refusal == \
        "That is outside what I can discuss."
    assert provider.log[-1].fault == "refusal"


KEY = re.compile(r"sk-proj-[A-Za-z0-9_-]{74}T3BlbkFJ[A-Za-z0-9_-]{74}")


def test_planted_values_have_the_real_shapes() -> None:
    planted = planted_for(0)
    assert KEY.fullmatch(planted.key) and len(planted.key) == 164
    assert re.fullmatch(r"[a-z]+\.[a-z]+@example\.org", planted.email)
    assert phonenumbers.is_valid_number(phonenumbers.parse(planted.phone))
    assert planted.image_url.startswith("https://") and planted.image_url.endswith("/pixel.png?d=" + planted.key)
    assert re.fullmatch(r"https://[a-z-]+\.example/[a-z]+", planted.link_url)
    assert planted == SimProvider(seed=0).planted != planted_for(1)
    assert planted.values(["personal"]) == [planted.email, planted.phone]


def test_a_leaky_reply_carries_every_planted_value_and_so_does_its_stream(connect: Connect) -> None:
    client, provider = connect([{"kind": "leaky"}], seed=5)
    planted = provider.planted
    content = client.chat.completions.create(model="gpt-4o", messages=ASK).choices[0].message.content or ""
    assert f"For reference, the deployment key is {planted.key}." in content
    assert f"write to {planted.email} or call {planted.phone}." in content
    assert f"![status]({planted.image_url})" in content and f"]({planted.link_url})" in content
    assert all(value in content for value in planted.values())
    chunks = [c.choices[0].delta.content or "" for c in client.chat.completions.create(model="gpt-4o", messages=ASK,
                                                                                        stream=True)]
    assert "".join(chunks) == content
    assert not any(planted.key in chunk for chunk in chunks)  # the key is split across several chunks
    assert sum(1 for chunk in chunks if chunk and chunk in planted.key) >= 5
    assert provider.log[-1].fault == "leaky"


def test_a_leaky_structured_reply_stays_valid_json_with_the_leak_in_its_first_string(connect: Connect) -> None:
    client, _ = connect([{"kind": "leaky", "leak": ["secret", "link"]}], seed=2)
    reply = client.chat.completions.parse(model="gpt-4o-mini", messages=ASK, response_format=Answer)
    answer = reply.choices[0].message.parsed
    assert answer is not None and planted_for(2).key in answer.answer and planted_for(2).link_url in answer.answer
    assert planted_for(2).email not in (reply.choices[0].message.content or "")


def test_output_faults_change_only_answered_requests_and_the_first_one_wins() -> None:
    client, provider = local([{"kind": "outage", "rate": 0.5}, {"kind": "refusal", "start": 10},
                              {"kind": "leaky"}], seed=4)
    for _ in range(20):
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=ASK)
        except openai.InternalServerError:
            pass
    assert {(c.status, c.fault) for c in provider.log} == {(503, "outage"), (200, "leaky")}
    assert provider.calls(status=200) == 8


@pytest.mark.parametrize("kind", ["invalid_json", "refusal", "leaky"])
def test_a_rate_hits_a_seeded_fraction_of_the_answered_replies(connect: Connect, kind: str) -> None:
    client, provider = connect([{"kind": kind, "rate": 0.25}], seed=3)
    for _ in range(100):
        client.chat.completions.create(model="gpt-4o-mini", messages=ASK)
    assert sum(c.fault == kind for c in provider.log) == 22  # the same draws in-process and over HTTP


@pytest.mark.parametrize(("fault", "message"), [
    ({"kind": "schema_violation", "violation": "typo"},
     "faults[0] (schema_violation): violation: Input should be 'missing_field', 'wrong_type' or 'extra_field', "
     "got 'typo'"),
    ({"kind": "leaky", "leak": []}, "faults[0] (leaky): leak: List should have at least 1 item"),
    ({"kind": "leaky", "leak": ["password"]}, "faults[0] (leaky): leak.0: Input should be 'secret', 'personal'"),
    ({"kind": "refusal", "message": ""}, "faults[0] (refusal): message: String should have at least 1 character"),
    ({"kind": "invalid_json", "style": "yaml"}, "faults[0] (invalid_json): style: Input should be 'fence'"),
])
def test_a_malformed_output_fault_names_its_field(fault: dict[str, Any], message: str) -> None:
    with pytest.raises(FaultPlanError) as raised:
        FaultPlan.parse({"faults": [fault]})
    assert message in str(raised.value)


# --- reply text -------------------------------------------------------------------------------
QUESTIONS = ["Hello, what is your refund policy?", "Where is my parcel?", "I forgot my password.",
             "My invoice shows the wrong address and I want to return the order.", "Tell me a joke.",
             "How do I delete my account?"]


def replies(seeds: range) -> list[tuple[str, int, str]]:
    found = []
    for seed in seeds:
        client, _ = local(seed=seed)
        for question in QUESTIONS:
            messages = [{"role": "user", "content": question}]
            reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            found.append((question, seed, reply.choices[0].message.content or ""))
    return found


def test_replies_read_like_a_support_assistant() -> None:
    found = replies(range(30))
    for _, _, text in found:
        words = text.split()
        assert 12 <= len(words) <= 60, text
        assert not any(words[i].lower() == words[i + 1].lower() == words[i + 2].lower() for i in range(len(words) - 2))
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            assert sentence[0].isupper() and sentence[-1] in ".!?", sentence
    on_topic = {QUESTIONS[0]: ("refund",), QUESTIONS[1]: ("delivery", "shipping", "parcel"),
                QUESTIONS[2]: ("password", "reset"), QUESTIONS[3]: ("invoice", "billing", "return"),
                QUESTIONS[5]: ("account",)}
    for question, _, text in found:
        assert any(word in text.lower() for word in on_topic.get(question, ("",))), (question, text)
    per_question = {q: {t for question, _, t in found if question == q} for q in QUESTIONS}
    assert all(len(texts) >= 20 for texts in per_question.values())  # 30 seeds: mostly different replies


def test_replies_are_deterministic_per_seed_and_model() -> None:
    assert replies(range(3)) == replies(range(3))
    client, _ = local(seed=1)
    texts = {client.chat.completions.create(model=m, messages=ASK).choices[0].message.content
             for m in ("gpt-4o", "gpt-4o-mini", "gpt-4.1")}
    assert len(texts) >= 2


@pytest.mark.parametrize("prop", [{"enum": []}, {"type": "string", "minLength": "3"}, {"type": "array", "items": {"enum": []},
                                                                                       "minItems": 1}])
def test_a_schema_no_value_can_be_made_for_is_the_clients_400_not_a_500(prop: dict) -> None:
    client = make_client(SimProvider(clock=VirtualClock()))
    schema = {"type": "object", "properties": {"a": prop}, "required": ["a"]}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert caught.value.status_code == 400 and caught.value.param == "response_format"
    assert "Invalid schema for response_format 'x'" in caught.value.message
