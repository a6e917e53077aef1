"""Typed event records that patterns emit, and a Recorder that collects them.

A pattern never prints, plots or logs. It calls an optional `on_event` sink with one of these
records, stamped with its clock's time; timelines, logs and metrics are views of the same list.
With no sink attached a pattern skips building the record, so events cost (almost) nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Event", "EventSink", "Recorder", "Attempt", "Wait", "GiveUp", "StateChange", "Rejected", "CallOutcome",
           "StoreFallback", "FallbackStep", "TextCleaned", "TurnsDropped", "InputRejected", "Screened", "Redacted",
           "LinkRemoved", "Truncated", "RepairAttempt", "OutputVerdict", "LimitChecked", "BudgetChanged",
           "DeadlineCut", "StreamCut", "CheckRan", "ReadinessChanged"]


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    """Clock time at which the thing happened (for an attempt: when it started)."""
    source: str
    """Name of the component instance that emitted it, e.g. the retrier's name."""

    def to_dict(self) -> dict[str, Any]:
        return {"event": type(self).__name__, **dataclasses.asdict(self)}


EventSink = Callable[[Event], None]
E = TypeVar("E", bound=Event)


# --- retry -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Attempt(Event):
    """One try of a call; `error` is None when it succeeded."""

    call_id: int
    attempt: int
    duration: float
    error: str | None = None
    status: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Wait(Event):
    """A pause before an attempt: after a failed one ("backoff", "retry-after"), or before a
    request the provider's x-ratelimit headers say would be refused ("x-ratelimit", from
    `course_lib.pacing`, with call_id and attempt 0)."""

    call_id: int
    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp(Event):
    """The call failed for good; reason says why no further attempt was made."""

    call_id: int
    attempts: int
    reason: str
    error: str


# --- circuit breaker -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StateChange(Event):
    """The breaker moved between "closed", "open" and "half-open"."""

    old: str
    new: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected(Event):
    """A call refused without being made; `retry_at` is when a probe may next be admitted."""

    state: str
    retry_at: float


@dataclass(frozen=True, slots=True)
class CallOutcome(Event):
    """A call the breaker admitted has finished; `verdict` is "success", "failure" or "ignored"
    (a client error, which says nothing about the provider's health)."""

    state: str
    verdict: str
    duration: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StoreFallback(Event):
    """Shared state (Redis) failed during `operation`; this process decided on its own."""

    operation: str
    error: str


# --- fallback chain --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FallbackStep(Event):
    """A handler of a fallback chain was tried: outcome is "answered", "skipped" (no call made,
    or nothing to offer), "failed" (fell through) or "raised" (the error goes to the caller)."""

    call_id: int
    handler: str
    outcome: str
    detail: str
    duration: float


# --- input validation ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TextCleaned(Event):
    """Unicode hygiene removed `count` characters of one kind (`what`, e.g. "zero-width") from
    `field`; the text the model sees differs from what the user typed, so it is recorded."""

    field: str
    what: str
    count: int


@dataclass(frozen=True, slots=True)
class TurnsDropped(Event):
    """A conversation was fitted to its token limit by dropping its `dropped` oldest messages."""

    dropped: int
    tokens_before: int
    tokens_after: int
    limit: int


@dataclass(frozen=True, slots=True)
class InputRejected(Event):
    """A request refused before any token was paid for; `field` and `reason` say why."""

    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class Screened(Event):
    """A screen looked at some text; `reasons` names the rules or categories that matched."""

    screen: str
    flagged: bool
    reasons: tuple[str, ...] = ()


# --- output validation -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Redacted(Event):
    """`count` spans of one `kind` (e.g. "openai_key", "email") were replaced by placeholders."""

    kind: str
    count: int


@dataclass(frozen=True, slots=True)
class LinkRemoved(Event):
    """A markdown image, link or link definition to a host not on the allow-list was removed
    (`kind` is "image", "link" or "definition"); only the host is kept, since the URL itself may
    carry a secret."""

    kind: str
    host: str


@dataclass(frozen=True, slots=True)
class Truncated(Event):
    """A reply of `tokens` tokens was cut to its limit of `limit` tokens."""

    tokens: int
    limit: int


@dataclass(frozen=True, slots=True)
class RepairAttempt(Event):
    """A model reply failed validation (`problem`: "invalid-json", "schema" or "length") and the
    model is asked again; tokens are those the failed reply cost."""

    attempt: int
    problem: str
    detail: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class OutputVerdict(Event):
    """The end of validating one reply: `outcome` is "accepted", "repaired", "refused" (the
    model declined) or "rejected" (still invalid after the last repair)."""

    outcome: str
    attempts: int
    detail: str = ""


# --- rate limits and budgets ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LimitChecked(Event):
    """A rate limiter decided on one request for `key`; `retry_after` (whole seconds) is set
    when it was refused."""

    key: str
    allowed: bool
    remaining: int
    retry_after: int | None = None


@dataclass(frozen=True, slots=True)
class BudgetChanged(Event):
    """A cost budget moved: `action` is "reserved", "settled", "released", "expired" (a lease
    ran out) or "refused"; amounts in US dollars."""

    key: str
    action: str
    amount_usd: float
    spent_usd: float
    limit_usd: float


# --- timeouts --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeadlineCut(Event):
    """A run's deadline ran out at `stage` (e.g. "model", "tool", "retry wait", "stream"):
    `budget` is the run's whole allowance in seconds, `elapsed` the time used when it was cut,
    `detail` what was cut off."""

    stage: str
    budget: float
    elapsed: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StreamCut(Event):
    """A stream was cut for `reason` ("first_token", "idle", "total" or "deadline") after
    waiting `limit` seconds; `pieces` and `characters` say how much had arrived."""

    reason: str
    limit: float
    pieces: int
    characters: int


# --- health and readiness ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CheckRan(Event):
    """A readiness check answered: `status` is "ok", "degraded" or "failed"; `cached` when the
    answer came from the cache instead of a probe; `latency` is the probe's own time."""

    check: str
    status: str
    latency: float
    cached: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ReadinessChanged(Event):
    """The overall readiness moved from `previous` to `current` ("ready", "degraded",
    "not_ready"); `reason` names the checks (or the shutdown) that moved it."""

    previous: str
    current: str
    reason: str = ""


class Recorder:
    """An event sink that keeps every event, in order, for plots and assertions."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def clear(self) -> None:
        self.events.clear()

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __repr__(self) -> str:
        return f"Recorder({len(self.events)} events)"
