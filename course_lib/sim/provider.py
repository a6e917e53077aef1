"""SimProvider: an OpenAI-compatible chat and moderation provider whose failures are scripted.

`handle()` turns one HTTP request into a `SimReply` (status, headers, body, or an instruction to
delay, hang or drop) without doing any I/O itself; the in-process transport and the HTTP server
carry the reply out. Replies use the real wire format, so the openai SDK parses them and raises
its real exception classes. Every request is logged in `provider.log`.

Endpoints: `POST /v1/chat/completions` (text, `response_format` json_object and json_schema,
streaming), `POST /v1/moderations`, `GET /v1/models[/name]`. What a reply says comes from
`content.py`; what goes wrong, from the fault plan (`faults.py`).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..clock import SYSTEM_CLOCK, Clock
from . import content
from .faults import OUTPUT_KINDS, FaultPlan
from .models import MODELS, count_prompt_tokens, encoding_for, text_pieces
from .moderation import classify, validate_moderation
from .requests import ApiError, validate_chat

__all__ = ["SimProvider", "SimReply", "CallRecord", "ApiError"]

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
    fault that decided it, or the output fault that changed a 200 reply (e.g. "leaky"). A
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
            return self._ok({"object": "list", "data": [self._model_card(name) for name in MODELS]})
        if method == "GET" and path.startswith("/models/"):
            name = path.removeprefix("/models/")
            if name not in MODELS:
                raise ApiError(404, f"The model `{name}` does not exist or you do not have access to it.", code="model_not_found")
            return self._ok(self._model_card(name))
        raise ApiError(404, f"Invalid URL ({method} {asked})")

    @staticmethod
    def _ok(data: Any) -> SimReply:
        return SimReply(200, {"content-type": "application/json"}, _json(data))

    @staticmethod
    def _model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": "course-lib-sim"}

    # --- chat completions ---------------------------------------------------------------------
    def _chat(self, headers: dict[str, str], body: bytes, t: float, request_id: str) -> SimReply:
        """A chat completion. Usage bills the messages only; a real provider also counts the tokens
        of a `response_format` schema (and caches it), so its prompt_tokens run higher there."""
        try:
            request = validate_chat(headers, body)
        except ApiError as error:
            self.log.append(CallRecord(t, None, error.status))
            raise
        model, messages = request["model"], request["messages"]
        prompt_tokens = count_prompt_tokens(messages, model)
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

        try:
            found = content.draft(self.seed, model, messages, request.get("response_format"))
        except (ValueError, TypeError, IndexError, KeyError) as error:  # the schema's fault (SchemaError is a ValueError)
            self.log.append(CallRecord(t, model, 400, None, prompt_tokens))
            name = request["response_format"]["json_schema"]["name"]
            why = str(error) if isinstance(error, content.SchemaError) else \
                f"no value can be made for it ({type(error).__name__}: {error})"
            raise ApiError(400, f"Invalid schema for response_format '{name}': {why}.",
                           param="response_format") from None

        refused = self._refused(model, t, prompt_tokens)
        if isinstance(refused, SimReply):
            return refused
        output = self._output_fault_for(model, t)
        text, refusal = (found.text, None) if output is None else content.apply_output_fault(
            found, output, seed=self.seed, prompt_key=f"{model}|{json.dumps(messages, sort_keys=True)}")
        truncated = output is not None and output.kind == "truncated"
        tokens, finish = self._cut(model, refusal if refusal is not None else text or "", limit, truncated)
        self.log.append(CallRecord(t, model, 200, output.kind if output else None, prompt_tokens, len(tokens)))
        usage = _usage(prompt_tokens, len(tokens))
        common = {"id": "chatcmpl-sim-" + request_id.removeprefix("req_sim_"), "created": int(self.clock.wall()),
                  "model": model, "service_tier": "default", "system_fingerprint": "fp_course_lib_sim"}
        field = "content" if refusal is None else "refusal"
        if request.get("stream"):
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            return SimReply(200, {"content-type": "text/event-stream", "cache-control": "no-cache"},
                            chunks=self._stream(common, model, tokens, finish, usage if include_usage else None, field),
                            delay=refused)
        said = "".join(text_pieces(tokens, model, size=len(tokens) or 1))
        message: dict[str, Any] = {"role": "assistant", "content": said if field == "content" else None,
                   "refusal": said if field == "refusal" else None, "annotations": []}
        completion = {**common, "object": "chat.completion", "usage": usage,
                      "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}
        return SimReply(200, {"content-type": "application/json"}, _json(completion), delay=refused)

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
            if fault.kind in OUTPUT_KINDS:
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
