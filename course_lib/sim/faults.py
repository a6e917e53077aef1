"""FaultPlan: what goes wrong at the simulated provider, and when.

Times are seconds since the provider was created, on its injected clock. Each fault applies in
[start, end), optionally to some models only, and to a `rate` fraction of the requests there
(drawn from the provider's seeded generator, so a plan replays identically).

    {"seed": 7, "faults": [
        {"kind": "outage", "start": 0, "end": 30, "status": 503},
        {"kind": "rate_limit", "start": 30, "end": 40, "retry_after": 2},
        {"kind": "latency", "seconds": 0.8, "models": ["gpt-4o"]},
        {"kind": "slow_stream", "first_token_seconds": 2, "chunk_seconds": 0.05, "stall_after": 3},
        {"kind": "invalid_json", "start": 40, "rate": 0.2}]}

Two families. Transport faults (outage, rate_limit, quota, capacity, latency, hang, drop,
slow_stream) decide whether and when a request is answered; they cover moderation requests too
unless `models` says otherwise (slow_stream only ever paces streamed chat completions). Output
faults (invalid_json, schema_violation, truncated, refusal, leaky) answer 200 but change what a
chat completion says: the bad output that output validation must catch.

Apart from the faults, `key_limits` gives every API key (or the listed ones) a request and a token
quota per minute, which chat completions report in OpenAI's `x-ratelimit-*` headers and enforce
with 429s; a plan without it sends no such headers:

    {"key_limits": {"requests_per_minute": 60, "tokens_per_minute": 40000}}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .models import MODELS
from .moderation import MODERATION_MODELS

__all__ = ["FaultPlan", "FaultPlanError", "Fault", "KeyLimits", "SlowStream", "OUTPUT_KINDS", "LEAKS"]

Leak = Literal["secret", "personal", "image", "link"]
LEAKS: tuple[Leak, ...] = ("secret", "personal", "image", "link")


class FaultPlanError(ValueError):
    """A fault plan that cannot be used; the message names the entry and the field."""


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: float = Field(0.0, ge=0)
    end: float = math.inf
    models: list[str] | None = Field(None, min_length=1)
    rate: float = Field(1.0, ge=0, le=1)

    @field_validator("end", mode="before")
    @classmethod
    def _open_ended(cls, end: Any) -> Any:
        return math.inf if end is None else end  # JSON has no infinity: a saved plan writes null

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str] | None) -> list[str] | None:
        unknown = sorted(set(models or ()) - MODELS.keys() - set(MODERATION_MODELS))
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {sorted(MODELS) + list(MODERATION_MODELS)}")
        return models

    @model_validator(mode="after")
    def _window(self) -> _Fault:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end:g}) must be after start ({self.start:g})")
        return self

    def covers(self, t: float, model: str) -> bool:
        return self.start <= t < self.end and (self.models is None or model in self.models)


class Outage(_Fault):
    """The provider answers with a server error."""

    kind: Literal["outage"] = "outage"
    status: Literal[500, 502, 503] = 503


class RateLimit(_Fault):
    """429 with `retry-after` and `retry-after-ms`, as OpenAI sends them."""

    kind: Literal["rate_limit"] = "rate_limit"
    retry_after: float = Field(1.0, gt=0)


class Quota(_Fault):
    """429 `insufficient_quota`: the account is out of credit; waiting will not help."""

    kind: Literal["quota"] = "quota"


class Capacity(_Fault):
    """At most `per_second` requests per one-second bucket, shared by all the models it covers;
    the rest are refused with `status` and no Retry-After (an overloaded server shedding load)."""

    kind: Literal["capacity"] = "capacity"
    per_second: int = Field(gt=0)
    status: Literal[429, 503] = 503


class Latency(_Fault):
    """Adds `seconds` before the answer (combines with other faults)."""

    kind: Literal["latency"] = "latency"
    seconds: float = Field(gt=0)


class Hang(_Fault):
    """No answer for `seconds`, longer than any sensible client timeout."""

    kind: Literal["hang"] = "hang"
    seconds: float = Field(600.0, gt=0)


class Drop(_Fault):
    """The connection is closed without a response."""

    kind: Literal["drop"] = "drop"


class SlowStream(_Fault):
    """Paces a streamed chat completion (stream=True; other requests are left alone): the
    response head comes as usual, the first chunk `first_token_seconds` after it, each later
    chunk `chunk_seconds` after the previous one. After `stall_after` content chunks (those
    carrying text or tool-call pieces; the opening chunk says only the role) the stream stalls
    for `stall_seconds`, then goes on; a client that gave up meanwhile finds the connection
    closed. Combines with the other faults as latency does: a request another fault refuses is
    refused, and latency still delays the head."""

    kind: Literal["slow_stream"] = "slow_stream"
    first_token_seconds: float = Field(0.0, ge=0, allow_inf_nan=False)
    chunk_seconds: float = Field(0.0, ge=0, allow_inf_nan=False)
    stall_after: int | None = Field(None, ge=0)
    stall_seconds: float = Field(600.0, gt=0, allow_inf_nan=False)

    @field_validator("models")
    @classmethod
    def _chat_models_only(cls, models: list[str] | None) -> list[str] | None:
        moderation = sorted(set(models or ()) & set(MODERATION_MODELS))
        if moderation:
            raise ValueError(f"slow_stream paces streamed chat completions only, not moderation model(s) "
                             f"{moderation}")
        return models

    def delays(self, chunks: int, trailing: int) -> list[float]:
        """Seconds to wait before each of `chunks` server-sent events, of which the last
        `trailing` (finish reason, usage, [DONE]) are not content."""
        waits = [self.first_token_seconds] + [self.chunk_seconds] * (chunks - 1)
        content = chunks - 1 - trailing  # events 1 .. content carry the pieces
        if self.stall_after is not None and self.stall_after <= content:
            waits[self.stall_after + 1] = self.stall_seconds  # instead of chunk_seconds
        return waits


class _OutputFault(_Fault):
    """Changes the content of a chat completion that would have succeeded (status 200 either
    way); a request refused by a transport fault, and any moderation request, is left alone."""

    @field_validator("models")
    @classmethod
    def _chat_models_only(cls, models: list[str] | None) -> list[str] | None:
        moderation = sorted(set(models or ()) & set(MODERATION_MODELS))
        if moderation:
            raise ValueError(f"output faults change chat completions only, not moderation model(s) {moderation}")
        return models


class InvalidJson(_OutputFault):
    """The content is not valid JSON: the JSON in a ```json fence after a sentence, with a trailing
    comma, or without its closing bracket (`style`; None picks one from the seed and prompt). A
    text request gets the broken form of `{"answer": <the reply>}`."""

    kind: Literal["invalid_json"] = "invalid_json"
    style: Literal["fence", "trailing_comma", "unclosed"] | None = None


class SchemaViolation(_OutputFault):
    """Valid JSON that breaks the requested schema in one way, at the top level: the first
    required field left out, given a value of the wrong type, or an extra field added
    (`internal_note`; pydantic ignores extra fields unless the model forbids them). A text or
    json_object request gets `{"answer": <the reply>}` broken the same way."""

    kind: Literal["schema_violation"] = "schema_violation"
    violation: Literal["missing_field", "wrong_type", "extra_field"] = "missing_field"


class Truncated(_OutputFault):
    """The reply runs into the token limit: cut to `max_tokens` when the request set one below the
    reply's length, else to half its tokens; finish_reason "length"."""

    kind: Literal["truncated"] = "truncated"


class Refusal(_OutputFault):
    """The model declines: `message.content` is null and `message.refusal` holds `message`, as the
    real API answers a structured-output request it will not fulfil."""

    kind: Literal["refusal"] = "refusal"
    message: str = Field("I'm sorry, but I can't help with that request.", min_length=1)


class Leaky(_OutputFault):
    """The reply carries planted data (`leak`): an OpenAI project key, an email address and phone
    number, a markdown image whose URL sends the key to an outside host, a link to an outside
    host. For JSON it goes into the first string value (a reply without one carries nothing).
    The values depend on the provider's seed
    only: `SimProvider.planted` (or `content.planted_for(seed)`) lists them."""

    kind: Literal["leaky"] = "leaky"
    leak: list[Leak] = Field(default_factory=lambda: list(LEAKS), min_length=1)


OUTPUT_KINDS = frozenset({"invalid_json", "schema_violation", "truncated", "refusal", "leaky"})

Fault = Annotated[
    Outage | RateLimit | Quota | Capacity | Latency | Hang | Drop | SlowStream
    | InvalidJson | SchemaViolation | Truncated | Refusal | Leaky,
    Field(discriminator="kind"),
]


class KeyLimits(BaseModel):
    """Per-key quotas, as a real provider sets them per organisation: each covered API key (the
    bearer token) has a bucket of `requests_per_minute` requests and one of `tokens_per_minute`
    tokens, full at first and refilling continuously (the whole limit over a minute) on the
    provider's clock. A chat completion takes one request and its tokens: prompt plus
    `max_tokens` (or `max_completion_tokens`) when set, taken up front; without one, the prompt up
    front and the real completion after the reply. A request the buckets cannot cover gets a 429
    `rate_limit_exceeded` with Retry-After and takes nothing; one needing more tokens than the
    whole limit gets a 429 without Retry-After (waiting cannot help). The buckets are checked
    before the transport faults, so a request they admit keeps its charge if a fault then fails
    it. Only chat completions count; moderation is not limited. `keys`: the keys covered (None:
    every key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int = Field(gt=0)
    tokens_per_minute: int = Field(gt=0)
    keys: list[str] | None = Field(None, min_length=1)

    def covers(self, key: str | None) -> bool:
        return key is not None and (self.keys is None or key in self.keys)


class FaultPlan(BaseModel):
    """A seeded list of faults; the first transport fault (in order) that applies to a request
    decides its fate, except latency, which adds its delay and lets the next ones decide, and
    slow_stream, which paces a streamed reply that is answered (the first one that applies).

    Output faults act afterwards, on a chat completion that is answered 200: the first one (in
    order) that applies changes the content, and is logged as the call's `fault`:
    invalid_json (not JSON at all), schema_violation (`violation`: missing_field, wrong_type or
    extra_field), truncated (finish_reason "length"), refusal (`message` in message.refusal,
    content null) and leaky (`leak`: secret, personal, image, link planted in the reply). A `rate`
    below 1 draws from the seeded generator only for requests the fault could change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    faults: list[Fault] = []
    key_limits: KeyLimits | None = None

    @classmethod
    def parse(cls, data: Any) -> FaultPlan:
        """Validate a dict (or a plan); raise FaultPlanError naming the bad entry."""
        if isinstance(data, FaultPlan):
            return data
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise FaultPlanError(_describe(error, data)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> FaultPlan:
        """Load a JSON plan; every error names the file (OSError if it cannot be read)."""
        try:
            data = json.loads(Path(path).read_bytes().decode("utf-8"))
        except UnicodeDecodeError as error:
            raise FaultPlanError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
        except json.JSONDecodeError as error:
            raise FaultPlanError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
        try:
            return cls.parse(data)
        except FaultPlanError as error:
            raise FaultPlanError(f"{path}: {error}") from None


def _describe(error: ValidationError, data: Any) -> str:
    """One line per problem, e.g. `faults[2] (rate_limit): retry_after: must be > 0, got -1`."""
    lines = []
    for problem in error.errors():
        where = list(problem["loc"])
        text = problem["msg"].removeprefix("Value error, ")
        if len(where) >= 2 and where[0] == "faults" and isinstance(where[1], int):
            index = where[1]
            entry = data["faults"][index] if isinstance(data, dict) else None
            kind = entry.get("kind", "?") if isinstance(entry, dict) else "?"
            fields = [str(part) for part in where[2:] if part != kind]
            label = f"faults[{index}] ({kind})" + (f": {'.'.join(fields)}" if fields else "")
        else:
            label = ".".join(str(part) for part in where) or "plan"
        if "input" in problem and problem["type"] not in ("missing", "model_type", "union_tag_invalid", "value_error"):
            text += f", got {problem['input']!r}"
        lines.append(f"{label}: {text}")
    return "invalid fault plan: " + "; ".join(lines)
