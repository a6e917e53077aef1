"""What the simulated provider accepts: chat-completion requests checked as the real API checks
them, and errors in its wire format (`{"error": {message, type, param, code}}`).

A wrongly typed or unknown parameter gets a 400 that names it, as from OpenAI, so code that
works against the simulator does not fail for the first time against the real thing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .models import MODELS

__all__ = ["ApiError", "validate_chat", "check_auth", "parse_body", "text_of", "ROLES", "RESPONSE_FORMATS"]

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
           "stream_options", "response_format"}
_NOT_SIMULATED = {"tools", "tool_choice", "functions", "function_call", "audio", "modalities",
                  "prediction", "reasoning_effort", "web_search_options"}
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
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


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body, or a 400 saying why not."""
    try:
        request = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"We could not parse the JSON body of your request ({error}).") from None
    if not isinstance(request, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return request


def text_of(content: Any) -> str:
    """The text of a message's content: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


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
    _check_parameters(request, model)
    _check_response_format(request.get("response_format"), request["messages"])
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
    name = spec.get("name")
    if name is None:
        raise _missing(f"{where}.name")
    if not isinstance(name, str):
        raise _wrong_type(f"{where}.name", "a string", name)
    if not _SCHEMA_NAME.fullmatch(name):
        raise _refuse(f"{where}.name", f"{name[:80]!r} must be 1 to 64 characters from a-z, A-Z, 0-9, '_' and '-'.")
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
        _check_strict(schema, "#", name)


def _schema_error(name: str, path: str, problem: str) -> ApiError:
    return ApiError(400, f"Invalid schema for response_format '{name}': at {path}, {problem}.", param="response_format")


def _check_strict(schema: Any, path: str, name: str) -> None:
    """Every object in a strict schema must set additionalProperties to false and list all of its
    properties in `required` (an optional field is written as a type that allows null)."""
    if not isinstance(schema, dict):
        return
    types = schema.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types) or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            raise _schema_error(name, path, "'additionalProperties' must be present and false when 'strict' is true")
        required = schema.get("required") or []
        missing = [key for key in schema.get("properties") or {} if key not in required]
        if missing:
            raise _schema_error(name, path, f"'required' must list every key of 'properties' when 'strict' is true; "
                                            f"missing {missing}")
    for key in ("properties", "$defs", "definitions"):
        for child, sub in (schema.get(key) or {}).items():
            _check_strict(sub, f"{path}/{key}/{child}", name)
    for key in ("anyOf", "allOf", "oneOf", "prefixItems"):
        for index, sub in enumerate(schema.get(key) or []):
            _check_strict(sub, f"{path}/{key}/{index}", name)
    _check_strict(schema.get("items"), f"{path}/items", name)
