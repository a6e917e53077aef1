"""Client-side pacing from the provider's `x-ratelimit-*` headers: slow down before a 429.

    pacer = ProviderPacer(clock=clock, on_event=recorder)
    client = make_client(provider, pacer=pacer)       # or make_async_client(provider, pacer=pacer)

Every reply from a rate-limited key (a 429 included) says how many requests and tokens are left
and how long until each limit is back to full (`x-ratelimit-reset-*`, in Go's duration format).
The pacer keeps the latest of these and, before the next request, waits for the reset when the
requests left are below `min_remaining_requests`, or when the tokens the request may use (its
prompt plus its `max_tokens`) would take the tokens left below `min_remaining_tokens`. A retry
only reacts to a refusal; the pacer avoids it. It sits in the HTTP transport (`PacedTransport`),
so the SDK's own calls, and its retries, all pass through it unchanged.

What the pacer knows is one client's view: other clients of the same key spend from the same
quota unseen, so keep a retry behind it. Until a first header arrives it never waits.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2

from ._wrapping import check
from .clock import SYSTEM_CLOCK, Clock
from .events import EventSink, Wait
from .sim.models import MODELS, count_prompt_tokens

__all__ = ["ProviderPacer", "LimitState", "PacedTransport", "AsyncPacedTransport", "parse_duration",
           "estimate_request_tokens", "KINDS"]

KINDS = ("requests", "tokens")
WAIT_REASON = "x-ratelimit"

_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ms|us|µs|μs|ns|h|m|s)")
_WHOLE = re.compile(rf"(?:{_PART.pattern})+")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration as OpenAI writes resets: "20ms", "1s", "0.5s", "6m0s", "1h2m5s".

    A bare "0" is accepted (Go writes it so); anything else without a unit is a ValueError that
    quotes the text, since guessing the unit could make a client wait a thousand times too long."""
    value = text.strip()
    if value == "0":
        return 0.0
    if not _WHOLE.fullmatch(value):
        raise ValueError(f"x-ratelimit reset must be a duration such as '1s', '20ms' or '6m0s', got {text!r}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(value))


@dataclass(frozen=True, slots=True)
class LimitState:
    """The provider's last word on one limit: `remaining` of `limit`, full again at `reset_at`
    (pacer clock time), `period` seconds after it said so. `limit` is None when not sent."""

    limit: int | None
    remaining: int
    reset_at: float
    period: float


def estimate_request_tokens(body: Mapping[str, Any]) -> int:
    """Tokens a chat request may take from the quota: its prompt plus the answer it allows
    (`max_completion_tokens` or `max_tokens`), which is what providers reserve up front. The
    prompt is counted exactly for a model the simulator knows, else at about 4 characters per
    token. A request that is not a chat completion counts 0."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    model = body.get("model")
    if isinstance(model, str) and model in MODELS:
        prompt = count_prompt_tokens(messages, model)
    else:
        prompt = math.ceil(len(json.dumps(messages)) / 4)
    answer = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return prompt + (answer if isinstance(answer, int) else 0)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    text = headers.get(name)
    if text is None:
        return None
    value = int(text.strip())  # a ValueError here means the header is malformed
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {text!r}")
    return value


class ProviderPacer:
    """Waits before a request the provider's own headers say it would refuse.

    `min_remaining_requests`: send only while at least this many requests are left (the default
    1 waits exactly when the provider reported 0; 0 never waits for requests).
    `min_remaining_tokens`: tokens to keep in reserve after this request's estimate.
    `estimate_tokens`: the tokens one request body (parsed JSON) may use.

    A malformed or missing header never fails a call: that limit keeps its previous state (or
    stays unknown) and `ignored_headers` counts the problem. A request larger than the whole
    token limit is not held back either, since no wait would make room; the provider refuses it.
    """

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, min_remaining_requests: int = 1, min_remaining_tokens: int = 0,
                 on_event: EventSink | None = None, name: str = "pacer",
                 estimate_tokens: Callable[[Mapping[str, Any]], int] = estimate_request_tokens) -> None:
        check(isinstance(min_remaining_requests, int) and min_remaining_requests >= 0, "min_remaining_requests", ">= 0",
              min_remaining_requests)
        check(isinstance(min_remaining_tokens, int) and min_remaining_tokens >= 0, "min_remaining_tokens", ">= 0",
              min_remaining_tokens)
        self.clock, self.on_event, self.name = clock, on_event, name
        self.min_remaining_requests, self.min_remaining_tokens = min_remaining_requests, min_remaining_tokens
        self.estimate_tokens = estimate_tokens
        self.state: dict[str, LimitState] = {}
        self.ignored_headers = 0
        self._lock = threading.Lock()

    # --- reading replies -------------------------------------------------------------------------
    def observe(self, headers: Mapping[str, str]) -> None:
        """Keep the latest `x-ratelimit-*` values of a reply (any status); never raises."""
        now = self.clock.now()
        for kind in KINDS:
            try:
                remaining = _int_header(headers, f"x-ratelimit-remaining-{kind}")
                reset = headers.get(f"x-ratelimit-reset-{kind}")
                if remaining is None and reset is None:
                    continue
                if remaining is None or reset is None:
                    raise ValueError(f"x-ratelimit-remaining-{kind} and -reset-{kind} come together")
                limit = _int_header(headers, f"x-ratelimit-limit-{kind}")
                period = parse_duration(reset)
                state = LimitState(limit, remaining, now + period, period)
            except ValueError:
                with self._lock:
                    self.ignored_headers += 1
                continue
            with self._lock:
                self.state[kind] = state

    # --- before a request ------------------------------------------------------------------------
    def _delay(self, kind: str, needed: int, cost: int, now: float) -> float:
        """Until the reset when fewer than `needed` are left; 0 when that cannot help."""
        state = self.state.get(kind)
        if state is None or state.reset_at <= now:  # unknown, or back to full by now
            return 0.0
        if state.limit is not None and cost > state.limit:
            return 0.0  # no wait makes room for it
        return state.reset_at - now if state.remaining < needed else 0.0

    def _debit(self, kind: str, cost: int, now: float) -> None:
        """Count this request against the known state, so concurrent requests see it before the
        provider's next reply replaces it. A reset that has passed refills the limit first, and
        the refilled limit is assumed to last as long as the provider's last quoted period."""
        state = self.state.get(kind)
        if state is None:
            return
        if state.reset_at <= now:
            if state.limit is None:
                del self.state[kind]
                return
            state = LimitState(state.limit, state.limit, now + state.period, state.period)
        self.state[kind] = LimitState(state.limit, state.remaining - cost, state.reset_at, state.period)

    def reserve(self, tokens: int) -> float:
        """Seconds to wait before a request of `tokens`; 0 means go, and the request is counted."""
        with self._lock:
            now = self.clock.now()
            delay = max(self._delay("requests", self.min_remaining_requests, 1, now),
                        self._delay("tokens", tokens + self.min_remaining_tokens, tokens, now))
            if delay == 0:
                self._debit("requests", 1, now)
                self._debit("tokens", tokens, now)
            return delay

    def _waiting(self, delay: float) -> None:
        if self.on_event is not None:
            self.on_event(Wait(self.clock.now(), self.name, call_id=0, attempt=0, delay=delay, reason=WAIT_REASON))

    def wait(self, tokens: int = 0) -> None:
        """Block (on the clock) until a request of `tokens` may go."""
        while (delay := self.reserve(tokens)) > 0:
            self._waiting(delay)
            self.clock.sleep(delay)

    async def await_turn(self, tokens: int = 0) -> None:
        """The async twin of `wait`."""
        while (delay := self.reserve(tokens)) > 0:
            self._waiting(delay)
            await self.clock.asleep(delay)

    def tokens_of(self, request: httpx2.Request) -> int:
        """The estimate for an outgoing request; 0 when its body is not JSON we can read."""
        try:
            body = json.loads(request.content) if request.content else None
            return self.estimate_tokens(body) if isinstance(body, Mapping) else 0
        except (httpx2.RequestNotRead, ValueError, TypeError, AttributeError, KeyError):
            return 0  # an odd body is the provider's to refuse, not a reason to fail here

    def __repr__(self) -> str:
        return (f"ProviderPacer(name={self.name!r}, min_remaining_requests={self.min_remaining_requests}, "
                f"min_remaining_tokens={self.min_remaining_tokens})")


class PacedTransport(httpx2.BaseTransport):
    """Wraps another httpx2 transport: wait for the pacer, send, hand the reply's headers back."""

    def __init__(self, inner: httpx2.BaseTransport, pacer: ProviderPacer) -> None:
        self.inner, self.pacer = inner, pacer

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.pacer.wait(self.pacer.tokens_of(request))
        response = self.inner.handle_request(request)
        self.pacer.observe(response.headers)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncPacedTransport(httpx2.AsyncBaseTransport):
    """The async twin of `PacedTransport`."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, pacer: ProviderPacer) -> None:
        self.inner, self.pacer = inner, pacer

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await self.pacer.await_turn(self.pacer.tokens_of(request))
        response = await self.inner.handle_async_request(request)
        self.pacer.observe(response.headers)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
