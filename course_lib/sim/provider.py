"""SimProvider: an OpenAI-compatible chat provider whose failures are scripted.

`handle()` turns one HTTP request into a `SimReply` (status, headers, body, or an instruction to
delay, hang or drop) without doing any I/O itself; the in-process transport and the HTTP server
carry the reply out. Replies use the real wire format, so the openai SDK parses them and raises
its real exception classes. Every request is logged in `provider.log`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..clock import SYSTEM_CLOCK, Clock
from .faults import FaultPlan
from .models import MODELS, count_prompt_tokens, encoding_for
from .requests import ApiError, validate_chat

__all__ = ["SimProvider", "SimReply", "CallRecord", "ApiError"]

MODELS_CREATED = 1_767_225_600  # 2026-01-01T00:00:00Z, the `created` date of every model card
API_VERSION = "2020-10-01"  # what OpenAI sends in its `openai-version` header
WORDS = (
    "your request has been received and the answer depends on the details of the order the "
    "policy allows a refund within thirty days when the item is unused and the receipt is kept "
    "our team reviews each case and replies by email shipping costs are covered when we made a "
    "mistake otherwise a small fee applies please keep the tracking number for reference"
).split()


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
    """One request as the provider saw it; status is None for a hang or a drop."""

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

        fault = self._fault_for(model, t)
        delay = fault.pop("delay")
        if fault:
            kind = fault["kind"]
            if "action" in fault:
                self.log.append(CallRecord(t, model, None, kind, prompt_tokens))
                return SimReply(delay=delay, action=fault["action"], hang_seconds=fault.get("hang_seconds", 0.0))
            refusal: ApiError = fault["error"]
            self.log.append(CallRecord(t, model, refusal.status, kind, prompt_tokens))
            return SimReply.refusal(refusal, delay)

        tokens, finish = self._reply(model, messages, limit)
        text, completion_tokens = encoding_for(model).decode(tokens), len(tokens)
        self.log.append(CallRecord(t, model, 200, None, prompt_tokens, completion_tokens))
        usage = _usage(prompt_tokens, completion_tokens)
        common = {"id": "chatcmpl-sim-" + request_id.removeprefix("req_sim_"), "created": int(self.clock.wall()), "model": model,
                  "service_tier": "default", "system_fingerprint": "fp_course_lib_sim"}
        if request.get("stream"):
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            return SimReply(200, {"content-type": "text/event-stream", "cache-control": "no-cache"},
                            chunks=self._stream(common, model, tokens, finish, usage if include_usage else None), delay=delay)
        message = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        completion = {**common, "object": "chat.completion", "usage": usage,
                      "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}
        return SimReply(200, {"content-type": "application/json"}, _json(completion), delay=delay)

    def _fault_for(self, model: str, t: float) -> dict[str, Any]:
        """The fault that decides this request (none: only "delay"), plus the delay of every
        latency fault that applies, wherever it stands in the plan."""
        delay, decision = 0.0, None
        for index, fault in enumerate(self.plan.faults):
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

    def _reply(self, model: str, messages: list[dict[str, Any]], limit: int | None) -> tuple[list[int], str]:
        """Deterministic reply tokens for (seed, model, prompt), cut to `limit`; and the finish reason."""
        prompt = json.dumps(messages, sort_keys=True)
        rng = random.Random(hashlib.sha256(f"{self.seed}|{model}|{prompt}".encode()).digest())
        words = [rng.choice(WORDS) for _ in range(rng.randint(12, 60))]
        sentences, start = [], 0
        while start < len(words):
            end = min(len(words), start + rng.randint(6, 12))
            sentence = " ".join(words[start:end])
            sentences.append(sentence[0].upper() + sentence[1:] + ".")
            start = end
        tokens: list[int] = encoding_for(model).encode(" ".join(sentences))
        if limit is not None and len(tokens) > limit:
            return tokens[:limit], "length"
        return tokens, "stop"

    @staticmethod
    def _stream(common: dict[str, Any], model: str, tokens: list[int], finish: str, usage: dict[str, Any] | None) -> list[bytes]:
        encoding = encoding_for(model)
        pieces = [encoding.decode(tokens[i:i + 4]) for i in range(0, len(tokens), 4)]
        extra = {"usage": None} if usage is not None else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return b"data: " + _json({**common, "object": "chat.completion.chunk", "choices": [choice], **extra}) + b"\n\n"

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"content": piece}) for piece in pieces]
        events.append(chunk({}, finish))
        if usage is not None:
            events.append(b"data: " + _json({**common, "object": "chat.completion.chunk", "choices": [], "usage": usage}) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return events
