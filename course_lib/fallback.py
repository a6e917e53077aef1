"""Fallback chain: best model, cheaper model, cache, static message, in that order.

    chain = FallbackChain([
        Handler("gpt-4o", ask_4o, breaker=CircuitBreaker(...), retrier=Retrier(...), context_window=128_000),
        Handler("gpt-4o-mini", ask_mini, context_window=128_000),
        Handler("cache", cached_answer, degraded=True),
        Handler("static", lambda *_: "We're busy; please try again shortly.", degraded=True),
    ])
    answer = chain.call(messages)      # or: await chain.acall(messages)
    answer.value, answer.handler, answer.degraded

The chain falls through only on provider failures (5xx, 429, timeouts, connection errors),
an open breaker (skipped without a call), or a handler with nothing to say (`NoAnswer`, e.g. a
cache miss). A 400 is raised at once, since every model would refuse the same request, except
`context_length_exceeded`, which moves on to a handler with a larger context window. Bugs
(TypeError, ...) propagate. The answer says who served it and whether it is degraded.

Composition inside a handler is retry inside breaker: the breaker sees one outcome per retried
call, and once it opens, no retries are spent on a provider that is known to be down.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import openai

from .breaker import BreakerOpen, CircuitBreaker, is_provider_failure
from .clock import SYSTEM_CLOCK, Clock
from .events import EventSink, FallbackStep
from .retry import Retrier

__all__ = ["Handler", "FallbackChain", "Answer", "NoAnswer", "FallbackExhausted"]

T = TypeVar("T")


class NoAnswer(Exception):
    """Raised by a handler that has nothing to offer this time (e.g. a cache miss)."""


class FallbackExhausted(Exception):
    """Every handler failed or was skipped; `errors` lists (handler, exception) in order."""

    def __init__(self, errors: list[tuple[str, BaseException]]) -> None:
        self.errors = errors
        summary = "; ".join(f"{name}: {type(error).__name__}" for name, error in errors)
        super().__init__(f"all {len(errors)} handlers failed ({summary})")


@dataclass(frozen=True)
class Handler:
    """One way to answer. `fn` is called with the chain's arguments (sync or async)."""

    name: str
    fn: Callable[..., Any]
    degraded: bool = False
    """True for answers that are not the real thing (cache, static text), so callers can tell."""
    context_window: int | None = None
    """Tokens this handler's model accepts; used to pick a target after a context-length error."""
    breaker: CircuitBreaker | None = None
    retrier: Retrier | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"Handler {self.name!r}: fn must be callable, got {type(self.fn).__name__}")
        call = self.fn
        if self.retrier is not None:
            call = self.retrier.wrap(call)
        if self.breaker is not None:
            call = self.breaker.wrap(call)
        object.__setattr__(self, "_call", call)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Answer(Generic[T]):
    """What the chain returns: the value, who produced it, and the way there."""

    value: T
    handler: str
    degraded: bool
    trail: tuple[tuple[str, str, str], ...] = field(default=())
    """(handler, outcome, detail) for every handler tried: answered, skipped or failed."""


def _is_context_length(error: BaseException) -> bool:
    return isinstance(error, openai.BadRequestError) and error.code == "context_length_exceeded"


class _Walk:
    """One request's way down the chain; shared by the sync and async entry points."""

    def __init__(self, chain: FallbackChain) -> None:
        self.chain = chain
        self.call_id = next(chain._call_ids)
        self.trail: list[tuple[str, str, str]] = []
        self.errors: list[tuple[str, BaseException]] = []
        self.too_small_at: int | None = None  # context window that was exceeded, if any

    def eligible(self, handler: Handler) -> bool:
        window = self.too_small_at
        if window is not None and handler.context_window is not None and handler.context_window <= window:
            self._note(handler, "skipped", f"context window {handler.context_window} <= {window}", 0.0)
            return False
        return True

    def answered(self, handler: Handler, value: Any, started: float) -> Answer[Any]:
        self._note(handler, "answered", "degraded" if handler.degraded else "", self.chain.clock.now() - started)
        return Answer(value, handler.name, handler.degraded, tuple(self.trail))

    def failed(self, handler: Handler, error: Exception, started: float) -> bool:
        """Record a failure; True if the chain moves on, False if the caller must re-raise."""
        duration = self.chain.clock.now() - started
        if isinstance(error, BreakerOpen):
            self._note(handler, "skipped", f"breaker {error.state}", duration)
        elif isinstance(error, NoAnswer):
            self._note(handler, "skipped", str(error) or "no answer", duration)
        elif _is_context_length(error):
            # The largest window known to be too small; a handler of unknown size adds nothing.
            self.too_small_at = max(self.too_small_at or 0, handler.context_window or 0)
            self._note(handler, "failed", "context_length_exceeded", duration)
        elif self.chain.falls_through(error):
            self._note(handler, "failed", f"{type(error).__name__}", duration)
        else:
            self._note(handler, "raised", f"{type(error).__name__}", duration)
            return False
        self.errors.append((handler.name, error))
        return True

    def exhausted(self) -> FallbackExhausted:
        return FallbackExhausted(self.errors)

    def _note(self, handler: Handler, outcome: str, detail: str, duration: float) -> None:
        self.trail.append((handler.name, outcome, detail))
        emit = self.chain.on_event
        if emit is not None:
            emit(FallbackStep(self.chain.clock.now() - duration, self.chain.name, self.call_id, handler.name, outcome, detail, duration))


class FallbackChain:
    """Tries handlers in order until one answers; see the module docstring for the rules."""

    def __init__(
        self,
        handlers: Sequence[Handler],
        *,
        falls_through: Callable[[BaseException], bool] = is_provider_failure,
        clock: Clock = SYSTEM_CLOCK,
        on_event: EventSink | None = None,
        name: str = "fallback",
    ) -> None:
        if not handlers:
            raise ValueError("handlers must hold at least one handler, got none")
        names = [h.name for h in handlers]
        if len(set(names)) != len(names):
            raise ValueError(f"handler names must be unique, got {names}")
        self.handlers = list(handlers)
        self.falls_through = falls_through
        self.clock = clock
        self.on_event = on_event
        self.name = name
        self._call_ids = itertools.count(1)

    def call(self, *args: Any, **kwargs: Any) -> Answer[Any]:
        """Answer with the first handler that can; every handler must be synchronous."""
        walk = _Walk(self)
        for handler in self.handlers:
            if not walk.eligible(handler):
                continue
            started = self.clock.now()
            try:
                value = handler(*args, **kwargs)
                if inspect.iscoroutine(value):
                    value.close()  # never to be awaited; closing avoids a "never awaited" warning
                    raise TypeError(f"handler {handler.name!r} is async; use `await chain.acall(...)`")
            except Exception as error:
                if not walk.failed(handler, error, started):
                    raise
                continue
            return walk.answered(handler, value, started)
        raise walk.exhausted()

    async def acall(self, *args: Any, **kwargs: Any) -> Answer[Any]:
        """Answer with the first handler that can; handlers may be sync or async."""
        walk = _Walk(self)
        for handler in self.handlers:
            if not walk.eligible(handler):
                continue
            started = self.clock.now()
            try:
                value = handler(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
            except Exception as error:
                if not walk.failed(handler, error, started):
                    raise
                continue
            return walk.answered(handler, value, started)
        raise walk.exhausted()
