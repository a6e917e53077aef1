"""SimProvider: an OpenAI-compatible chat and moderation provider whose failures are scripted.

`handle()` turns one HTTP request into a `SimReply` (status, headers, body, or an instruction to
delay, hang or drop; for a slow stream, the wait before each chunk) without doing any I/O itself;
the in-process transport and the HTTP server carry the reply out. Replies use the real wire
format, so the openai SDK parses them and raises its real exception classes. Every request is
logged in `provider.log`.

Endpoints: `POST /v1/chat/completions` (text, `response_format` json_object and json_schema,
tool calls, streaming), `POST /v1/moderations`, `GET /v1/models[/name]`. What a reply says comes
from `content.py` and `tools.py`; what goes wrong, from the fault plan (`faults.py`), whose
`key_limits` also set per-key quotas reported in `x-ratelimit-*` headers.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..clock import SYSTEM_CLOCK, Clock
from . import content, tools
from .faults import OUTPUT_KINDS, FaultPlan, KeyLimits, SlowStream
from .models import MODELS, encoding_for, text_pieces, whole_text
from .moderation import classify, validate_moderation
from .requests import ApiError, bearer_key, validate_chat

__all__ = ["SimProvider", "SimReply", "CallRecord", "ApiError", "KeyQuotas", "duration"]

MODELS_CREATED = 1_767_225_600  # 2026-01-01T00:00:00Z, the `created` date of every model card
API_VERSION = "2020-10-01"  # what OpenAI sends in its `openai-version` header


@dataclass
class SimReply:
    """What to send back, and how: answer (after `delay`), hang, or drop the connection."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: list[bytes] | None = None
    """Server-sent events for a streamed completion (the body is then empty)."""
    chunk_delays: list[float] | None = None
    """Seconds to wait before each chunk (a slow_stream fault), the first counted from the
    response head; None sends them all at once."""
    delay: float = 0.0
    action: Literal["respond", "hang", "drop"] = "respond"
    hang_seconds: float = 0.0

    @classmethod
    def refusal(cls, error: ApiError, delay: float = 0.0) -> SimReply:
        """An OpenAI-style JSON error reply, with the error's own headers (e.g. Retry-After)."""
        return cls(error.status, {"content-type": "application/json", **error.headers}, _json(error.body()), delay=delay)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One request as the provider saw it; status is None for a hang or a drop. `fault` names the
    fault that decided it, or the output fault that changed a 200 reply (e.g. "leaky"), or else
    "slow_stream" for a streamed reply that fault paced. A
    moderation request has its moderation model and no tokens (moderation is not billed)."""

    t: float
    model: str | None
    status: int | None
    fault: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """Token usage with the detail objects the real API always includes (nothing is cached,
    no reasoning or audio tokens in the simulator)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def duration(seconds: float) -> str:
    """A wait as OpenAI writes it in `x-ratelimit-reset-*` (Go's duration format, to the
    millisecond): "0s", "20ms", "1s", "1.5s", "6m0s", "1h0m0s"."""
    ms = max(0, math.ceil(round(seconds * 1000, 6)))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs


class KeyQuotas:
    """The request and token buckets of each API key under `KeyLimits` (see there for the rules):
    levels refill continuously at the limit per minute, up to the limit."""

    def __init__(self, limits: KeyLimits) -> None:
        self.limits = limits
        self._state: dict[str, tuple[float, float, float]] = {}  # key -> (requests, tokens, at time)

    def levels(self, key: str, t: float) -> tuple[float, float]:
        """(requests, tokens) left for `key` at `t`, refilled since it was last seen."""
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        requests, tokens, then = self._state.get(key, (rpm, tpm, t))
        elapsed = max(0.0, t - then)
        return min(rpm, requests + elapsed * rpm / 60), min(tpm, tokens + elapsed * tpm / 60)

    def admit(self, key: str, t: float, tokens: int) -> ApiError | None:
        """Take one request and `tokens` from the key's buckets, or the 429 that refuses them (taking nothing)."""
        requests, left = self.levels(key, t)
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        if tokens > tpm:
            return ApiError(429, f"Request too large for this API key's tokens per minute (TPM): limit {tpm}, "
                                 f"requested {tokens}. Send fewer prompt tokens or a lower max_tokens.", "tokens",
                            code="rate_limit_exceeded")
        if requests < 1:
            return self._refusal("requests", "requests per minute (RPM)", rpm, requests, 1, (1 - requests) * 60 / rpm)
        if left < tokens:
            return self._refusal("tokens", "tokens per minute (TPM)", tpm, left, tokens, (tokens - left) * 60 / tpm)
        self._state[key] = (requests - 1, left - tokens, t)
        return None

    @staticmethod
    def _refusal(kind: str, label: str, limit: int, left: float, wanted: int, wait: float) -> ApiError:
        headers = {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
        return ApiError(429, f"Rate limit reached for this API key's {label}: limit {limit}, remaining "
                             f"{max(0, math.floor(left))}, requested {wanted}. Please try again in {duration(wait)}.",
                        kind, code="rate_limit_exceeded", headers=headers)

    def charge(self, key: str, t: float, tokens: int) -> None:
        """Take `tokens` more (the completion of a request that set no max_tokens); the bucket may
        go below zero, and then refills from there."""
        requests, left = self.levels(key, t)
        self._state[key] = (requests, left - tokens, t)

    def headers(self, key: str, t: float) -> dict[str, str]:
        """The six `x-ratelimit-*` headers for `key` at `t`."""
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        requests, tokens = self.levels(key, t)
        return {"x-ratelimit-limit-requests": str(rpm), "x-ratelimit-limit-tokens": str(tpm),
                "x-ratelimit-remaining-requests": str(max(0, math.floor(requests + 1e-9))),
                "x-ratelimit-remaining-tokens": str(max(0, math.floor(tokens + 1e-9))),
                "x-ratelimit-reset-requests": duration((rpm - requests) * 60 / rpm),
                "x-ratelimit-reset-tokens": duration((tpm - tokens) * 60 / tpm)}


class SimProvider:
    """The simulated provider. Times in the fault plan count from its creation on `clock`."""

    def __init__(self, plan: FaultPlan | Mapping[str, Any] | None = None, *, clock: Clock = SYSTEM_CLOCK, seed: int | None = None) -> None:
        self.plan = FaultPlan.parse(plan if plan is not None else {})
        self.clock = clock
        self.seed = self.plan.seed if seed is None else seed
        self.started = clock.now()
        self.log: list[CallRecord] = []
        self._rng = random.Random(self.seed)
        self._ids = itertools.count(1)
        self._buckets: dict[int, tuple[int, int]] = {}  # capacity fault -> (second, requests used)
        self.quotas = KeyQuotas(self.plan.key_limits) if self.plan.key_limits is not None else None
        self._lock = threading.Lock()

    @property
    def planted(self) -> content.Planted:
        """What a `leaky` fault plants in this provider's replies (the same for each, from the
        seed): `.key`, `.email`, `.phone`, `.image_url`, `.link_url`, and `.values(leak)`."""
        return content.planted_for(self.seed)

    def calls(self, model: str | None = None, status: int | None = None) -> int:
        """How many requests reached the provider (optionally for one model or status)."""
        return sum(1 for c in self.log if (model is None or c.model == model) and (status is None or c.status == status))

    # --- entry point --------------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> SimReply:
        with self._lock:
            t = self.clock.now() - self.started
            request_id = f"req_sim_{next(self._ids)}"
            try:
                reply = self._route(method.upper(), path.rstrip("/"), {k.lower(): v for k, v in headers.items()}, body, t, request_id)
            except ApiError as error:
                reply = SimReply.refusal(error)
            except Exception as bug:  # a simulator bug must look like one, not like a dropped connection
                reply = SimReply.refusal(ApiError(500, f"The simulator failed on this request ({type(bug).__name__}: {bug}).",
                                                  "server_error"))
            reply.headers.setdefault("x-request-id", request_id)
            reply.headers.setdefault("openai-processing-ms", str(round(reply.delay * 1000)))
            reply.headers.setdefault("openai-version", API_VERSION)
            return reply

    def _route(self, method: str, path: str, headers: dict[str, str], body: bytes, t: float, request_id: str) -> SimReply:
        asked = path = path.split("?", 1)[0]
        if path.startswith("/v1/"):
            path = path[3:]
        if method == "POST" and path == "/chat/completions":
            return self._chat(headers, body, t, request_id)
        if method == "POST" and path == "/moderations":
            return self._moderation(headers, body, t, request_id)
        if method == "GET" and path == "/models":
            return self._listing({"object": "list", "data": [self._model_card(name) for name in MODELS]}, t)
        if method == "GET" and path.startswith("/models/"):
            name = path.removeprefix("/models/")
            if name not in MODELS:
                raise ApiError(404, f"The model `{name}` does not exist or you do not have access to it.", code="model_not_found")
            return self._listing(self._model_card(name), t)
        raise ApiError(404, f"Invalid URL ({method} {asked})")

    def _listing(self, data: Any, t: float) -> SimReply:
        """`GET /v1/models[/name]`: not billed, so not in `log`; but a transport fault that names
        no models (the whole API down, slow or hanging) applies to it as to chat, so a readiness
        probe that lists the models sees such an outage. A fault for some models only does not."""
        fault = self._fault_for("", t)
        delay = fault.pop("delay")
        if "action" in fault:
            return SimReply(delay=delay, action=fault["action"], hang_seconds=fault.get("hang_seconds", 0.0))
        if "error" in fault:
            return SimReply.refusal(fault["error"], delay)
        return SimReply(200, {"content-type": "application/json"}, _json(data), delay=delay)

    @staticmethod
    def _model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": "course-lib-sim"}

    # --- chat completions ---------------------------------------------------------------------
    def _chat(self, headers: dict[str, str], body: bytes, t: float, request_id: str) -> SimReply:
        """A chat completion; with `key_limits` in the plan, every reply to a covered key (errors
        too) carries the key's `x-ratelimit-*` headers as they stand after the request."""
        key = bearer_key(headers)
        if self.quotas is None or not self.quotas.limits.covers(key):
            return self._completion(headers, body, t, request_id, None)
        assert key is not None
        try:
            reply = self._completion(headers, body, t, request_id, key)
        except ApiError as error:
            reply = SimReply.refusal(error)
        reply.headers.update(self.quotas.headers(key, t))
        return reply

    def _completion(self, headers: dict[str, str], body: bytes, t: float, request_id: str, key: str | None) -> SimReply:
        """A chat completion: text, structured output, or tool calls. Usage bills the messages (and
        the tool calls they carry, see tools.py) only; a real provider also counts the tokens of a
        `response_format` schema and of the tool definitions, so its prompt_tokens run higher there."""
        try:
            request = validate_chat(headers, body)
        except ApiError as error:
            self.log.append(CallRecord(t, None, error.status))
            raise
        model, messages = request["model"], request["messages"]
        prompt_tokens = tools.prompt_tokens(messages, model)
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        window = MODELS[model].context_window
        if prompt_tokens + (limit or 0) > window:
            self.log.append(CallRecord(t, model, 400, None, prompt_tokens))
            raise ApiError(
                400,
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{prompt_tokens + (limit or 0)} tokens ({prompt_tokens} in the messages, {limit or 0} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages",
                code="context_length_exceeded",
            )
        calls = self._tool_calls(request, t, prompt_tokens) if tools.wants_tool_calls(request) else None
        found = self._draft(request, t, prompt_tokens) if calls is None else None
        if key is not None and self.quotas is not None:
            refusal = self.quotas.admit(key, t, prompt_tokens + (limit or 0))
            if refusal is not None:
                self.log.append(CallRecord(t, model, 429, "key_limits", prompt_tokens))
                raise refusal
        refused = self._refused(model, t, prompt_tokens)
        if isinstance(refused, SimReply):
            return refused
        if calls is not None:
            reply, completion_tokens = self._tool_reply(request, calls, t, request_id, refused)
        else:
            assert found is not None
            reply, completion_tokens = self._text_reply(request, found, t, request_id, refused)
        if reply.chunks is not None:
            self._pace(reply, request, t)
        if key is not None and self.quotas is not None and limit is None:
            self.quotas.charge(key, t, completion_tokens)
        return reply

    def _draft(self, request: dict[str, Any], t: float, prompt_tokens: int) -> content.Draft:
        """What the model says in text (support sentences, or a report of the tool results that end
        the conversation), in the requested format; a schema no value fits is a 400."""
        model, messages = request["model"], request["messages"]
        try:
            return content.draft(self.seed, model, messages, request.get("response_format"),
                                 tools.answer_from_results(self.seed, model, messages))
        except (ValueError, TypeError, IndexError, KeyError) as error:  # the schema's fault (SchemaError is a ValueError)
            self.log.append(CallRecord(t, model, 400, None, prompt_tokens))
            name = request["response_format"]["json_schema"]["name"]
            why = str(error) if isinstance(error, content.SchemaError) else \
                f"no value can be made for it ({type(error).__name__}: {error})"
            raise ApiError(400, f"Invalid schema for response_format '{name}': {why}.",
                           param="response_format") from None

    def _tool_calls(self, request: dict[str, Any], t: float, prompt_tokens: int) -> list[dict[str, Any]]:
        """The calls the model makes; a parameters schema no arguments fit is a 400 naming the tool."""
        try:
            return tools.tool_calls_for(self.seed, request["model"], request)
        except tools.ToolSchemaError as error:
            self.log.append(CallRecord(t, request["model"], 400, None, prompt_tokens))
            raise ApiError(400, str(error), param=f"tools[{error.index}].function.parameters",
                           code="invalid_function_parameters") from None

    def _common(self, model: str, request_id: str) -> dict[str, Any]:
        return {"id": "chatcmpl-sim-" + request_id.removeprefix("req_sim_"), "created": int(self.clock.wall()),
                "model": model, "service_tier": "default", "system_fingerprint": "fp_course_lib_sim"}

    def _text_reply(self, request: dict[str, Any], found: content.Draft, t: float, request_id: str,
                    delay: float) -> tuple[SimReply, int]:
        """A 200 with content (or a refusal), output faults applied; and its completion tokens."""
        model, messages = request["model"], request["messages"]
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        output = self._output_fault_for(model, t)
        text, refusal = (found.text, None) if output is None else content.apply_output_fault(
            found, output, seed=self.seed, prompt_key=f"{model}|{json.dumps(messages, sort_keys=True)}")
        truncated = output is not None and output.kind == "truncated"
        tokens, finish = self._cut(model, refusal if refusal is not None else text or "", limit, truncated)
        prompt_tokens = tools.prompt_tokens(messages, model)
        self.log.append(CallRecord(t, model, 200, output.kind if output else None, prompt_tokens, len(tokens)))
        usage = _usage(prompt_tokens, len(tokens))
        common = self._common(model, request_id)
        field = "content" if refusal is None else "refusal"
        if request.get("stream"):
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            return SimReply(200, {"content-type": "text/event-stream", "cache-control": "no-cache"},
                            chunks=self._stream(common, model, tokens, finish, usage if include_usage else None, field),
                            delay=delay), len(tokens)
        said = whole_text(tokens, model)
        message: dict[str, Any] = {"role": "assistant", "content": said if field == "content" else None,
                   "refusal": said if field == "refusal" else None, "annotations": []}
        completion = {**common, "object": "chat.completion", "usage": usage,
                      "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}
        return SimReply(200, {"content-type": "application/json"}, _json(completion), delay=delay), len(tokens)

    def _tool_reply(self, request: dict[str, Any], calls: list[dict[str, Any]], t: float, request_id: str,
                    delay: float) -> tuple[SimReply, int]:
        """A 200 whose message is `tool_calls` (content null), finish_reason "tool_calls", or
        "length" with the arguments cut where max_tokens runs out. Output faults leave it alone."""
        model, messages = request["model"], request["messages"]
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        calls, used, finish = self._cut_calls(model, calls, limit)
        prompt_tokens = tools.prompt_tokens(messages, model)
        self.log.append(CallRecord(t, model, 200, None, prompt_tokens, used))
        usage = _usage(prompt_tokens, used)
        common = self._common(model, request_id)
        if request.get("stream"):
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            return SimReply(200, {"content-type": "text/event-stream", "cache-control": "no-cache"},
                            chunks=self._stream_calls(common, model, calls, finish, usage if include_usage else None),
                            delay=delay), used
        message = {"role": "assistant", "content": None, "refusal": None, "annotations": [], "tool_calls": calls}
        completion = {**common, "object": "chat.completion", "usage": usage,
                      "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}
        return SimReply(200, {"content-type": "application/json"}, _json(completion), delay=delay), used

    @staticmethod
    def _cut_calls(model: str, calls: list[dict[str, Any]], limit: int | None) -> tuple[list[dict[str, Any]], int, str]:
        """(calls, completion tokens, finish reason): within `limit`, the calls whole; past it, the
        call it runs out in with its arguments cut (no longer valid JSON), and none after it."""
        total = tools.completion_tokens(calls, model)
        if limit is None or total <= limit:
            return calls, total, "tool_calls"
        kept, left = [], limit
        for call in calls:
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            left -= encoding_for(model).count(name)
            tokens = encoding_for(model).encode(arguments)
            if left < len(tokens):
                cut = whole_text(tokens[:max(0, left)], model)
                kept.append({**call, "function": {"name": name, "arguments": cut}})
                break
            kept.append(call)
            left -= len(tokens)
        return kept, tools.completion_tokens(kept, model), "length"

    def _refused(self, model: str, t: float, prompt_tokens: int = 0) -> SimReply | float:
        """The reply a transport fault gives this request (logged), or else the delay to answer after."""
        fault = self._fault_for(model, t)
        delay = fault.pop("delay")
        if not fault:
            return delay
        kind = fault["kind"]
        if "action" in fault:
            self.log.append(CallRecord(t, model, None, kind, prompt_tokens))
            return SimReply(delay=delay, action=fault["action"], hang_seconds=fault.get("hang_seconds", 0.0))
        error: ApiError = fault["error"]
        self.log.append(CallRecord(t, model, error.status, kind, prompt_tokens))
        return SimReply.refusal(error, delay)

    def _pace(self, reply: SimReply, request: dict[str, Any], t: float) -> None:
        """Give a streamed reply the chunk delays of the first slow_stream fault that applies (a
        rate below 1 draws only here, for streams); the log names it unless an output fault does."""
        assert reply.chunks is not None
        for fault in self.plan.faults:
            if not isinstance(fault, SlowStream) or not fault.covers(t, request["model"]):
                continue
            if fault.rate < 1 and self._rng.random() >= fault.rate:
                continue
            usage = bool((request.get("stream_options") or {}).get("include_usage"))
            reply.chunk_delays = fault.delays(len(reply.chunks), trailing=2 + usage)  # finish, [usage], [DONE]
            if self.log and self.log[-1].fault is None:
                self.log[-1] = dataclasses.replace(self.log[-1], fault="slow_stream")
            return

    def _output_fault_for(self, model: str, t: float) -> Any:
        """The first output fault (in plan order) that changes this 200 reply, if any; a rate below 1
        draws from the seeded generator only here, for replies it could change."""
        for fault in self.plan.faults:
            if fault.kind not in OUTPUT_KINDS or not fault.covers(t, model):
                continue
            if fault.rate < 1 and self._rng.random() >= fault.rate:
                continue
            return fault
        return None

    @staticmethod
    def _cut(model: str, text: str, limit: int | None, truncated: bool) -> tuple[list[int], str]:
        """The reply's tokens, cut to `limit`; and the finish reason. A `truncated` fault cuts at the
        limit if the reply is longer, else at half the reply, and always finishes with "length"."""
        tokens: list[int] = encoding_for(model).encode(text)
        if truncated:
            keep = limit if limit is not None and len(tokens) > limit else max(1, len(tokens) // 2)
            return tokens[:keep], "length"
        if limit is not None and len(tokens) > limit:
            return tokens[:limit], "length"
        return tokens, "stop"

    # --- moderations --------------------------------------------------------------------------
    def _moderation(self, headers: dict[str, str], body: bytes, t: float, request_id: str) -> SimReply:
        """`POST /v1/moderations`: one result per input, from the phrase table in moderation.py.
        Transport faults apply as to chat (a fault without `models` covers it too)."""
        try:
            model, texts = validate_moderation(headers, body)
        except ApiError as error:
            self.log.append(CallRecord(t, None, error.status))
            raise
        refused = self._refused(model, t)
        if isinstance(refused, SimReply):
            return refused
        self.log.append(CallRecord(t, model, 200))
        result = {"id": "modr-sim-" + request_id.removeprefix("req_sim_"), "model": model,
                  "results": [classify(text) for text in texts]}
        return SimReply(200, {"content-type": "application/json"}, _json(result), delay=refused)

    def _fault_for(self, model: str, t: float) -> dict[str, Any]:
        """The fault that decides this request (none: only "delay"), plus the delay of every
        latency fault that applies, wherever it stands in the plan."""
        delay, decision = 0.0, None
        for index, fault in enumerate(self.plan.faults):
            if fault.kind in OUTPUT_KINDS or fault.kind == "slow_stream":
                continue  # acts later, on a reply that is answered
            if (decision is not None and fault.kind != "latency") or not fault.covers(t, model):
                continue
            if fault.rate < 1 and self._rng.random() >= fault.rate:
                continue
            if fault.kind == "latency":
                delay += fault.seconds
            elif fault.kind == "capacity":
                second = math.floor(t)
                start, used = self._buckets.get(index, (second, 0))  # one bucket for all the models it covers
                used = used if start == second else 0
                if used < fault.per_second:
                    self._buckets[index] = (second, used + 1)
                    continue
                error = (ApiError(429, "Rate limit reached: too many requests per second.", "requests", code="rate_limit_exceeded")
                         if fault.status == 429 else self._server_error(503))
                decision = {"kind": fault.kind, "error": error}
            elif fault.kind in ("hang", "drop"):
                decision = {"kind": fault.kind, "action": fault.kind, "hang_seconds": getattr(fault, "seconds", 0.0)}
            else:
                decision = {"kind": fault.kind, "error": self._fault_error(fault)}
        return {**(decision or {}), "delay": delay}

    @staticmethod
    def _fault_error(fault: Any) -> ApiError:
        if fault.kind == "rate_limit":
            wait = fault.retry_after
            headers = {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(round(wait * 1000))}
            return ApiError(429, f"Rate limit reached for requests. Please try again in {wait:g}s.", "requests",
                            code="rate_limit_exceeded", headers=headers)
        if fault.kind == "quota":
            return ApiError(429, "You exceeded your current quota, please check your plan and billing details.",
                            "insufficient_quota", code="insufficient_quota")
        return SimProvider._server_error(fault.status)

    @staticmethod
    def _server_error(status: int) -> ApiError:
        messages = {500: "The server had an error while processing your request.", 502: "Bad gateway.",
                    503: "The server is overloaded or not ready yet."}
        return ApiError(status, messages[status], "server_error")

    @staticmethod
    def _stream_calls(common: dict[str, Any], model: str, calls: list[dict[str, Any]], finish: str,
                      usage: dict[str, Any] | None) -> list[bytes]:
        """Server-sent events for tool calls, as the real API sends them: each call opens with its
        index, id, type and name (empty arguments), then its arguments follow in pieces of about
        four tokens, `delta.tool_calls[0].function.arguments` each; the first chunk also says the role."""
        extra = {"usage": None} if usage is not None else {}

        def event(data: dict[str, Any]) -> bytes:
            return b"data: " + _json({**common, "object": "chat.completion.chunk", **data}) + b"\n\n"

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return event({"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                          **extra})

        events = []
        for index, call in enumerate(calls):
            opening = {"index": index, "id": call["id"], "type": "function",
                       "function": {"name": call["function"]["name"], "arguments": ""}}
            first = {"role": "assistant", "content": None, "refusal": None} if index == 0 else {}
            events.append(chunk({**first, "tool_calls": [opening]}))
            pieces = text_pieces(encoding_for(model).encode(call["function"]["arguments"]), model)
            events += [chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}) for piece in pieces]
        events.append(chunk({}, finish))
        if usage is not None:
            events.append(event({"choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        return events

    @staticmethod
    def _stream(common: dict[str, Any], model: str, tokens: list[int], finish: str, usage: dict[str, Any] | None,
                field: str = "content") -> list[bytes]:
        """Server-sent events, four tokens a chunk; a refusal streams in `delta.refusal`."""
        pieces = text_pieces(tokens, model)
        extra = {"usage": None} if usage is not None else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return b"data: " + _json({**common, "object": "chat.completion.chunk", "choices": [choice], **extra}) + b"\n\n"

        first = {"role": "assistant", "content": "", "refusal": None} if field == "content" else \
            {"role": "assistant", "content": None, "refusal": ""}
        events = [chunk(first)]
        events += [chunk({field: piece}) for piece in pieces]
        events.append(chunk({}, finish))
        if usage is not None:
            events.append(b"data: " + _json({**common, "object": "chat.completion.chunk", "choices": [], "usage": usage}) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return events
