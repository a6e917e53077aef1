"""What the simulated provider accepts: chat-completion requests checked as the real API checks
them, and errors in its wire format (`{"error": {message, type, param, code}}`).

A wrongly typed or unknown parameter gets a 400 that names it, as from OpenAI, so code that
works against the simulator does not fail for the first time against the real thing. That
includes tool calling: `tools`, `tool_choice`, assistant messages carrying `tool_calls`, and
`tool` messages, each of which must answer a call of the assistant message just before it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from .models import MODELS, text_of

__all__ = ["ApiError", "validate_chat", "check_auth", "bearer_key", "parse_body", "ROLES",
           "RESPONSE_FORMATS", "TOOL_CHOICES", "MAX_TOOLS"]

ROLES = {"system", "developer", "user", "assistant", "tool"}

# name -> (kind, lowest, highest); None for no bound.
_NUMBERS: dict[str, tuple[str, float | None, float | None]] = {
    "temperature": ("number", 0, 2),
    "top_p": ("number", 0, 1),
    "presence_penalty": ("number", -2, 2),
    "frequency_penalty": ("number", -2, 2),
    "seed": ("integer", None, None),
    "top_logprobs": ("integer", 0, 20),
}
_BOOLEANS = {"stream", "logprobs", "store", "parallel_tool_calls"}
_STRINGS = {"user", "service_tier"}
_OTHERS = {"model", "messages", "n", "max_tokens", "max_completion_tokens", "stop", "logit_bias", "metadata",
           "stream_options", "response_format", "tools", "tool_choice"}
_NOT_SIMULATED = {"functions", "function_call", "audio", "modalities",
                  "prediction", "reasoning_effort", "web_search_options"}
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
TOOL_CHOICES = ("none", "auto", "required")
MAX_TOOLS = 128  # the real API's limit on `tools`
_SCHEMA_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_KNOWN = set(_NUMBERS) | _BOOLEANS | _STRINGS | _OTHERS


class ApiError(Exception):
    """An OpenAI-style error reply: status plus `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", *,
                 param: str | None = None, code: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"),
                       (dict, "an object")):
        if isinstance(value, kind):
            return name
    return "null"


def _refuse(name: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"Invalid '{name}': {message}", param=name, code=code)


def _wrong_type(name: str, expected: str, value: Any) -> ApiError:
    return ApiError(400, f"Invalid type for '{name}': expected {expected}, got {_json_type(value)}.", param=name,
                    code="invalid_type")


def check_auth(headers: Mapping[str, str]) -> None:
    """401 unless the request carries a bearer key (any key: the simulator checks its presence only)."""
    auth = headers.get("authorization", "")
    if not auth.startswith("Bearer ") or not auth[7:].strip():
        raise ApiError(401, "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.", code="invalid_api_key")


def bearer_key(headers: Mapping[str, str]) -> str | None:
    """The API key of a request (lower-case header names), or None without one."""
    auth = headers.get("authorization", "")
    return (auth[7:].strip() or None) if auth.startswith("Bearer ") else None


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body, or a 400 saying why not."""
    try:
        request = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"We could not parse the JSON body of your request ({error}).") from None
    if not isinstance(request, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return request


def validate_chat(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The request as a dict, or ApiError (401, 400, 404) naming what is wrong."""
    check_auth(headers)
    request = parse_body(body)
    for name in request:
        if name in _NOT_SIMULATED:
            raise ApiError(400, f"The simulated provider does not implement '{name}'.", param=name)
        if name not in _KNOWN:
            raise ApiError(400, f"Unrecognized request argument supplied: {name}")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "You must provide a model parameter.", param="model")
    if model not in MODELS:
        raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found")
    _check_messages(request.get("messages"))
    _check_tool_turns(request["messages"])
    _check_parameters(request, model)
    _check_response_format(request.get("response_format"), request["messages"])
    _check_tools(request)
    return request


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array of message objects.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            got = message.get("role") if isinstance(message, dict) else message
            raise ApiError(400, f"Invalid value for 'messages[{i}].role': {got!r}; expected one of {sorted(ROLES)}.",
                           param=f"messages[{i}].role")
        content = message.get("content")
        if not isinstance(content, (str, list, type(None))):
            raise ApiError(400, f"Invalid type for 'messages[{i}].content': expected a string or an array of parts.",
                           param=f"messages[{i}].content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                raise ApiError(400, f"Invalid content part 'messages[{i}].content[{j}]': expected an object whose 'text' is a string.",
                               param=f"messages[{i}].content[{j}]")
        if not isinstance(message.get("name", ""), str):
            raise ApiError(400, f"Invalid type for 'messages[{i}].name': expected a string.", param=f"messages[{i}].name")
        if message.get("tool_calls") is not None:
            _check_tool_calls(message, f"messages[{i}]")
        if message["role"] == "tool":
            _check_tool_message(message, f"messages[{i}]")


def _check_parameters(request: dict[str, Any], model: str) -> None:
    given = {name: value for name, value in request.items() if value is not None}  # null means "not set"
    for name, (kind, low, high) in _NUMBERS.items():
        if name in given:
            _check_number(name, given[name], kind, low, high)
    for name in _BOOLEANS & given.keys():
        if not isinstance(given[name], bool):
            raise _wrong_type(name, "a boolean", given[name])
    for name in _STRINGS & given.keys():
        if not isinstance(given[name], str):
            raise _wrong_type(name, "a string", given[name])
    if given.get("n", 1) != 1:
        raise ApiError(400, "The simulated provider supports only n=1.", param="n")
    most = MODELS[model].max_output_tokens
    for name in ("max_tokens", "max_completion_tokens"):
        value = given.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most):
            raise _refuse(name, f"expected an integer from 1 to {most} for {model}, got {value!r}.")
    stop = given.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and len(stop) <= 4
                                                            and all(isinstance(s, str) for s in stop))):
        raise _refuse("stop", "expected a string or an array of up to 4 strings.")
    bias = given.get("logit_bias")
    if bias is not None and not (isinstance(bias, dict) and all(
            _is_number(v) and -100 <= v <= 100 for v in bias.values())):
        raise _refuse("logit_bias", "expected an object mapping token ids to numbers from -100 to 100.")
    metadata = given.get("metadata")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise _refuse("metadata", "expected an object whose values are strings.")
    options = given.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _wrong_type("stream_options", "an object", options)
        if not given.get("stream"):
            raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                           param="stream_options")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(name: str, value: Any, kind: str, low: float | None, high: float | None) -> None:
    if not _is_number(value) or (kind == "integer" and not isinstance(value, int)):
        raise _wrong_type(name, f"an {kind}" if kind == "integer" else "a number", value)
    if low is not None and value < low:
        raise _refuse(name, f"must be at least {low:g}, got {value!r}.")
    if high is not None and value > high:
        raise _refuse(name, f"must be at most {high:g}, got {value!r}.")


# --- response_format ------------------------------------------------------------------------------
def _missing(name: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")


def _only(fields: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for name in fields:
        if name not in allowed:
            raise ApiError(400, f"Unrecognized argument '{where}.{name}'; expected only {sorted(allowed)}.",
                           param=f"{where}.{name}", code="unknown_parameter")


def _check_response_format(response_format: Any, messages: list[dict[str, Any]]) -> None:
    """`{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {...}}`,
    with the real API's rules: json_object needs the word "json" in the messages (so the model is
    told to write JSON), and a strict schema must close every object and require all its keys."""
    if response_format is None:
        return
    if not isinstance(response_format, dict):
        raise _wrong_type("response_format", "an object", response_format)
    kind = response_format.get("type")
    if kind is None:
        raise _missing("response_format.type")
    if kind not in RESPONSE_FORMATS:
        raise ApiError(400, f"Invalid value for 'response_format.type': {kind!r}; supported values are "
                            f"{', '.join(repr(k) for k in RESPONSE_FORMATS)}.", param="response_format.type",
                       code="invalid_value")
    _only(response_format, {"type", "json_schema"} if kind == "json_schema" else {"type"}, "response_format")
    if kind == "json_object" and not any("json" in text_of(m.get("content")).casefold() for m in messages):
        raise ApiError(400, "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                            "'json_object'.", param="messages")
    if kind == "json_schema":
        _check_json_schema(response_format.get("json_schema"))


def _check_json_schema(spec: Any) -> None:
    where = "response_format.json_schema"
    if spec is None:
        raise _missing(where)
    if not isinstance(spec, dict):
        raise _wrong_type(where, "an object", spec)
    _only(spec, {"name", "description", "schema", "strict"}, where)
    name = _function_name(spec.get("name"), where)
    for field, expected, kind in (("description", "a string", str), ("strict", "a boolean", bool)):
        if spec.get(field) is not None and not isinstance(spec[field], kind):
            raise _wrong_type(f"{where}.{field}", expected, spec[field])
    schema = spec.get("schema")
    if schema is None:
        raise _missing(f"{where}.schema")
    if not isinstance(schema, dict):
        raise _wrong_type(f"{where}.schema", "an object", schema)
    if spec.get("strict"):
        if schema.get("type") != "object":
            raise _schema_error(name, "#", f"the root must be of 'type: \"object\"', got {schema.get('type')!r}")
        _check_strict(schema, "#", lambda path, problem: _schema_error(name, path, problem))


def _schema_error(name: str, path: str, problem: str) -> ApiError:
    return ApiError(400, f"Invalid schema for response_format '{name}': at {path}, {problem}.", param="response_format")


_Fail = Callable[[str, str], ApiError]
"""Builds the 400 for a schema problem (path inside the schema, what is wrong)."""


def _check_strict(schema: Any, path: str, fail: _Fail) -> None:
    """Every object in a strict schema must set additionalProperties to false and list all of its
    properties in `required` (an optional field is written as a type that allows null)."""
    if not isinstance(schema, dict):
        return
    types = schema.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types) or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            raise fail(path, "'additionalProperties' must be present and false when 'strict' is true")
        required = schema.get("required") or []
        missing = [key for key in schema.get("properties") or {} if key not in required]
        if missing:
            raise fail(path, f"'required' must list every key of 'properties' when 'strict' is true; missing {missing}")
    for key in ("properties", "$defs", "definitions"):
        for child, sub in (schema.get(key) or {}).items():
            _check_strict(sub, f"{path}/{key}/{child}", fail)
    for key in ("anyOf", "allOf", "oneOf", "prefixItems"):
        for index, sub in enumerate(schema.get(key) or []):
            _check_strict(sub, f"{path}/{key}/{index}", fail)
    _check_strict(schema.get("items"), f"{path}/items", fail)


# --- tools ------------------------------------------------------------------------------------------
def _check_tools(request: dict[str, Any]) -> None:
    """`tools` (function tools only), `tool_choice` and `parallel_tool_calls`, as the real API checks
    them: the last two only make sense with tools, and a named choice must be one of them."""
    tools = request.get("tools")
    if tools is None:
        for name in ("tool_choice", "parallel_tool_calls"):
            if request.get(name) is not None:
                raise ApiError(400, f"Invalid value for '{name}': it is only allowed when 'tools' are given.",
                               param=name, code="invalid_value")
        return
    if not isinstance(tools, list):
        raise _wrong_type("tools", "an array", tools)
    if not tools:
        raise ApiError(400, "Invalid 'tools': empty array; give at least one tool, or leave 'tools' out.",
                       param="tools", code="empty_array")
    if len(tools) > MAX_TOOLS:
        raise ApiError(400, f"Invalid 'tools': at most {MAX_TOOLS} tools, got {len(tools)}.", param="tools",
                       code="array_above_max_length")
    names = [_check_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools)]
    _check_tool_choice(request.get("tool_choice"), names)


def _check_tool(tool: Any, where: str) -> str:
    """One `{"type": "function", "function": {name, description?, parameters?, strict?}}`; its name."""
    if not isinstance(tool, dict):
        raise _wrong_type(where, "an object", tool)
    _only(tool, {"type", "function"}, where)
    kind = tool.get("type")
    if kind is None:
        raise _missing(f"{where}.type")
    if kind != "function":
        raise ApiError(400, f"Invalid value for '{where}.type': {kind!r}; the simulated provider supports only "
                            "'function' tools.", param=f"{where}.type", code="invalid_value")
    function = tool.get("function")
    if function is None:
        raise _missing(f"{where}.function")
    if not isinstance(function, dict):
        raise _wrong_type(f"{where}.function", "an object", function)
    where = f"{where}.function"
    _only(function, {"name", "description", "parameters", "strict"}, where)
    name = _function_name(function.get("name"), where)
    for field, expected, kind in (("description", "a string", str), ("strict", "a boolean", bool),
                                  ("parameters", "an object", dict)):
        if function.get(field) is not None and not isinstance(function[field], kind):
            raise _wrong_type(f"{where}.{field}", expected, function[field])
    parameters = function.get("parameters")
    if parameters is None:
        return name

    def fail(path: str, problem: str) -> ApiError:
        return ApiError(400, f"Invalid schema for function '{name}': at {path}, {problem}.",
                        param=f"{where}.parameters", code="invalid_function_parameters")

    if parameters.get("type") != "object":
        raise fail("#", f"the root must be of 'type: \"object\"', got {parameters.get('type')!r}")
    if function.get("strict"):
        _check_strict(parameters, "#", fail)
    return name


def _function_name(name: Any, where: str) -> str:
    if name is None:
        raise _missing(f"{where}.name")
    if not isinstance(name, str):
        raise _wrong_type(f"{where}.name", "a string", name)
    if not _SCHEMA_NAME.fullmatch(name):
        raise _refuse(f"{where}.name", f"{name[:80]!r} must be 1 to 64 characters from a-z, A-Z, 0-9, '_' and '-'.")
    return name


def _check_tool_choice(choice: Any, names: list[str]) -> None:
    """"none", "auto", "required", or `{"type": "function", "function": {"name": <one of the tools>}}`."""
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise ApiError(400, f"Invalid value for 'tool_choice': {choice!r}; expected one of "
                                f"{', '.join(repr(c) for c in TOOL_CHOICES)} or an object naming a function.",
                           param="tool_choice", code="invalid_value")
        return
    if not isinstance(choice, dict):
        raise _wrong_type("tool_choice", "a string or an object", choice)
    _only(choice, {"type", "function"}, "tool_choice")
    if choice.get("type") is None:
        raise _missing("tool_choice.type")
    if choice["type"] != "function":
        raise ApiError(400, f"Invalid value for 'tool_choice.type': {choice['type']!r}; expected 'function'.",
                       param="tool_choice.type", code="invalid_value")
    function = choice.get("function")
    if function is None:
        raise _missing("tool_choice.function")
    if not isinstance(function, dict):
        raise _wrong_type("tool_choice.function", "an object", function)
    _only(function, {"name"}, "tool_choice.function")
    name = _function_name(function.get("name"), "tool_choice.function")
    if name not in names:
        raise ApiError(400, f"Invalid value for 'tool_choice.function.name': {name!r} is not among the tools "
                            f"offered ({', '.join(names)}).", param="tool_choice.function.name", code="invalid_value")


def _check_tool_calls(message: dict[str, Any], where: str) -> None:
    """An assistant message's `tool_calls`: a non-empty array of `{id, type: "function", function:
    {name, arguments}}`; the arguments are the JSON text the model wrote, so any string."""
    calls = message["tool_calls"]
    if message["role"] != "assistant":
        raise ApiError(400, f"Invalid '{where}.tool_calls': only assistant messages carry tool calls, this one has "
                            f"role {message['role']!r}.", param=f"{where}.tool_calls", code="unknown_parameter")
    if not isinstance(calls, list):
        raise _wrong_type(f"{where}.tool_calls", "an array", calls)
    if not calls:
        raise ApiError(400, f"Invalid '{where}.tool_calls': empty array; leave it out when there are no calls.",
                       param=f"{where}.tool_calls", code="empty_array")
    for index, call in enumerate(calls):
        at = f"{where}.tool_calls[{index}]"
        if not isinstance(call, dict):
            raise _wrong_type(at, "an object", call)
        _only(call, {"id", "type", "function"}, at)
        for field in ("id", "type", "function"):
            if call.get(field) is None:
                raise _missing(f"{at}.{field}")
        if not isinstance(call["id"], str) or not call["id"]:
            raise _wrong_type(f"{at}.id", "a non-empty string", call["id"])
        if call["type"] != "function":
            raise ApiError(400, f"Invalid value for '{at}.type': {call['type']!r}; expected 'function'.",
                           param=f"{at}.type", code="invalid_value")
        if not isinstance(call["function"], dict):
            raise _wrong_type(f"{at}.function", "an object", call["function"])
        _only(call["function"], {"name", "arguments"}, f"{at}.function")
        for field in ("name", "arguments"):
            value = call["function"].get(field)
            if value is None:
                raise _missing(f"{at}.function.{field}")
            if not isinstance(value, str):
                raise _wrong_type(f"{at}.function.{field}", "a string", value)


def _check_tool_message(message: dict[str, Any], where: str) -> None:
    call_id = message.get("tool_call_id")
    if call_id is None:
        raise _missing(f"{where}.tool_call_id")
    if not isinstance(call_id, str):
        raise _wrong_type(f"{where}.tool_call_id", "a string", call_id)
    if message.get("content") is None:
        raise _missing(f"{where}.content")


def _check_tool_turns(messages: list[dict[str, Any]]) -> None:
    """Each `tool` message answers a call of the assistant message before it (only other tool
    messages in between), and every call of such an assistant message is answered before the
    conversation goes on, or ends: the pairing the real API insists on."""
    asked: dict[str, bool] = {}  # the open assistant message's call ids -> answered yet
    asker = -1
    for i, message in enumerate(messages):
        if message["role"] == "tool":
            call_id = message["tool_call_id"]
            if asker < 0:
                raise ApiError(400, f"Invalid 'messages[{i}]': a 'tool' message must answer a tool call of the "
                                    f"assistant message before it, and there is no such call.",
                               param=f"messages[{i}].role", code="invalid_value")
            if call_id not in asked:
                raise ApiError(400, f"Invalid 'messages[{i}].tool_call_id': {call_id!r} is not among the tool calls "
                                    f"of messages[{asker}] ({', '.join(asked)}).",
                               param=f"messages[{i}].tool_call_id", code="invalid_value")
            asked[call_id] = True
            continue
        _check_answered(asked, asker)
        calls = message.get("tool_calls") or []
        asked = {call["id"]: False for call in calls}
        asker = i if calls else -1
    _check_answered(asked, asker)


def _check_answered(asked: dict[str, bool], asker: int) -> None:
    missing = [call_id for call_id, answered in asked.items() if not answered]
    if missing:
        raise ApiError(400, f"Invalid 'messages[{asker}].tool_calls': an assistant message with tool calls must be "
                            f"followed by a 'tool' message for each of them; none answers {', '.join(missing)}.",
                       param=f"messages[{asker}].tool_calls", code="invalid_value")
