"""Circuit breaker: stop calling a provider that is failing, and probe it carefully.

    from course_lib.breaker import BreakerPolicy, CircuitBreaker

    breaker = CircuitBreaker(BreakerPolicy(trip_on="rate", failure_rate=0.5, minimum_calls=10))

    @breaker
    def ask(prompt): ...

closed -> open when failures reach the threshold (consecutive count, or a failure rate over a
sliding window of calls or seconds); open -> half-open once `open_seconds` have passed on the
injected monotonic clock; half-open admits at most `half_open_probes` calls at a time, closes
after `probes_to_close` successes and reopens on a probe failure (a probe unanswered for
`probe_timeout` is presumed lost and its slot freed). A rejected call raises
`BreakerOpen`, which says when the next probe may go. Only provider-side failures count; one
user's malformed request (a 400) cannot open the breaker for everyone. The lock is held while
deciding, never while the protected call runs. State can live in Redis to share one breaker
between processes (`course_lib.breaker_redis.RedisState`, or `AsyncRedisState` in async code).
"""

from __future__ import annotations

import inspect
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import openai

from ._wrapping import CallWrapper, check
from .clock import SYSTEM_CLOCK, Clock
from .events import CallOutcome, Event, EventSink, Rejected, StateChange

__all__ = [
    "CLOSED",
    "OPEN",
    "HALF_OPEN",
    "BreakerPolicy",
    "BreakerOpen",
    "CircuitBreaker",
    "LocalState",
    "is_provider_failure",
]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
Verdict = Literal["success", "failure", "ignored"]
Moves = list[tuple[str, str, str]]
NO_MOVES: Moves = []  # shared and never appended to: the common case allocates nothing
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When to open, how long to stay open, and how to probe. Checked on construction."""

    trip_on: Literal["consecutive", "rate"] = "consecutive"
    failure_threshold: int = 5
    """consecutive: open after this many failures in a row."""
    failure_rate: float = 0.5
    """rate: open when failures / calls in the window reach this fraction..."""
    minimum_calls: int = 10
    """...and the window holds at least this many calls (no verdict on three calls)."""
    window: Literal["count", "time"] = "count"
    window_size: float = 20
    """The last N calls (count) or the calls of the last N seconds (time)."""
    slow_call_seconds: float | None = None
    """A call that succeeds but takes at least this long counts as a failure."""
    open_seconds: float = 30.0
    """How long to fail fast before admitting a probe."""
    half_open_probes: int = 1
    """Probe calls allowed at the same time while half-open; every other caller is rejected."""
    probes_to_close: int = 1
    """Probe successes needed to close again."""
    probe_timeout: float = 60.0
    """A probe unanswered for this long is presumed lost (its caller died, or its coroutine was
    never awaited); a new half-open round frees its slot, so one lost probe cannot wedge the
    breaker half-open for ever."""

    def __post_init__(self) -> None:
        check(self.trip_on in ("consecutive", "rate"), "trip_on", "'consecutive' or 'rate'", self.trip_on)
        check(isinstance(self.failure_threshold, int) and self.failure_threshold >= 1, "failure_threshold", ">= 1", self.failure_threshold)
        check(0 < self.failure_rate <= 1, "failure_rate", "in (0, 1]", self.failure_rate)
        check(isinstance(self.minimum_calls, int) and self.minimum_calls >= 1, "minimum_calls", ">= 1", self.minimum_calls)
        check(self.window in ("count", "time"), "window", "'count' or 'time'", self.window)
        check(math.isfinite(self.window_size) and self.window_size > 0, "window_size", "> 0", self.window_size)
        if self.window == "count":
            check(float(self.window_size).is_integer(), "window_size", "a whole number of calls for window='count'", self.window_size)
            check(self.minimum_calls <= self.window_size, "minimum_calls", f"<= window_size ({self.window_size:g})", self.minimum_calls)
        check(self.slow_call_seconds is None or self.slow_call_seconds > 0, "slow_call_seconds", "> 0 or None", self.slow_call_seconds)
        check(math.isfinite(self.open_seconds) and self.open_seconds >= 0, "open_seconds", ">= 0", self.open_seconds)
        check(isinstance(self.half_open_probes, int) and self.half_open_probes >= 1, "half_open_probes", ">= 1", self.half_open_probes)
        check(isinstance(self.probes_to_close, int) and self.probes_to_close >= 1, "probes_to_close", ">= 1", self.probes_to_close)
        check(math.isfinite(self.probe_timeout) and self.probe_timeout > 0, "probe_timeout", "> 0", self.probe_timeout)


def is_provider_failure(exc: BaseException) -> bool:
    """True when the provider, not the request, is at fault: 5xx, 408, 409, 429, timeouts and
    connection errors (what `retry.is_transient` retries, quota included). Other 4xx and our
    own bugs say nothing about the provider's health."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in (408, 409, 429)
    return isinstance(exc, (openai.APIConnectionError, TimeoutError, ConnectionError))


class BreakerOpen(Exception):
    """Raised instead of making the call. `retry_at` is the clock time from which a probe may
    be admitted (for a half-open breaker whose probe slots are taken: now)."""

    def __init__(self, name: str, state: str, now: float, retry_at: float) -> None:
        self.name, self.state, self.retry_at = name, state, retry_at
        self.retry_in = max(0.0, retry_at - now)
        detail = f"next probe in {self.retry_in:.2f}s" if state == OPEN else "probe calls already in flight"
        super().__init__(f"circuit '{name}' is {state}: call rejected, {detail}")


# --- state ------------------------------------------------------------------------------------
Ticket = tuple[int, str, float]
"""What admission hands back for `settle`: (generation, state at admission, start time).
A plain tuple because it is built on every call."""


class BreakerState(Protocol):
    """Where a breaker keeps its state: in this process, or shared (e.g. Redis)."""

    def admit(self, now: float) -> tuple[Ticket | None, float, Moves]:
        """(ticket, retry_in, transitions): a ticket if admitted; if not, the seconds until a
        probe may go (a duration, because a shared store may keep time on another clock)."""
        ...

    def settle(self, ticket: Ticket, verdict: Verdict, now: float) -> Moves:
        """Record a finished call; returns the transitions (old, new, reason) it caused."""
        ...

    def current(self, now: float) -> str: ...


class _FailureWindow:
    """Outcomes of recent calls in the closed state, for the trip decision."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.outcomes: deque[tuple[float, bool]] = deque()
        self.failures = 0
        self.consecutive = 0

    def add(self, now: float, failed: bool) -> None:
        self.consecutive = self.consecutive + 1 if failed else 0
        if self.policy.trip_on == "consecutive":
            return
        self.outcomes.append((now, failed))
        self.failures += failed
        if self.policy.window == "count":
            if len(self.outcomes) > self.policy.window_size:
                self.failures -= self.outcomes.popleft()[1]
        else:
            self._forget_before(now - self.policy.window_size)

    def _forget_before(self, horizon: float) -> None:
        while self.outcomes and self.outcomes[0][0] <= horizon:
            self.failures -= self.outcomes.popleft()[1]

    def tripped(self, now: float) -> str | None:
        """Why the breaker should open now, or None."""
        policy = self.policy
        if policy.trip_on == "consecutive":
            if self.consecutive >= policy.failure_threshold:
                return f"{self.consecutive} consecutive failures"
            return None
        if policy.window == "time":
            self._forget_before(now - policy.window_size)
        calls = len(self.outcomes)
        if calls >= policy.minimum_calls and self.failures / calls >= policy.failure_rate:  # 55/100 == 0.55; 0.55*100 > 55
            return f"failure rate {self.failures}/{calls} >= {float(policy.failure_rate)!r}"
        return None

    def clear(self) -> None:
        self.outcomes.clear()
        self.failures = self.consecutive = 0


class LocalState:
    """Breaker state in this process, guarded by a lock held only while deciding."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state = CLOSED
        self.generation = 0
        self.opened_at = self.half_opened_at = -math.inf
        self.probes_in_flight = 0
        self.probe_successes = 0
        self.window = _FailureWindow(policy)
        self.lock = threading.Lock()

    def _move(self, new: str, now: float, reason: str, moves: Moves) -> Moves:
        moves = [*moves, (self.state, new, reason)]
        self.state = new
        self.generation += 1
        self.probes_in_flight = self.probe_successes = 0
        if new == OPEN:
            self.opened_at = now
        elif new == HALF_OPEN:
            self.half_opened_at = now
        else:
            self.window.clear()
        return moves

    def admit(self, now: float) -> tuple[Ticket | None, float, Moves]:
        generation = self.generation  # read first: if the state changes meanwhile, the ticket is stale
        if self.state == CLOSED:  # reading one attribute is atomic: no lock for the common case
            return (generation, CLOSED, now), 0.0, NO_MOVES
        moves = NO_MOVES
        with self.lock:
            if self.state == OPEN:
                reopen_at = self.opened_at + self.policy.open_seconds
                if now < reopen_at:
                    return None, reopen_at - now, moves
                moves = self._move(HALF_OPEN, now, f"open for {float(self.policy.open_seconds)!r}s", moves)
            if self.state == HALF_OPEN:
                if self.probes_in_flight >= self.policy.half_open_probes:
                    if now < self.half_opened_at + self.policy.probe_timeout:
                        return None, 0.0, moves
                    moves = self._move(HALF_OPEN, now, f"probe unanswered for {float(self.policy.probe_timeout)!r}s", moves)
                self.probes_in_flight += 1
            return (self.generation, self.state, now), 0.0, moves

    def settle(self, ticket: Ticket, verdict: Verdict, now: float) -> Moves:
        if verdict == "success" and self.policy.trip_on == "consecutive" and self.window.consecutive == 0 and ticket[1] == CLOSED:
            return NO_MOVES  # nothing to record: no lock for the common case
        moves = NO_MOVES
        with self.lock:
            if ticket[0] != self.generation:
                return moves  # the state changed while this call ran; its outcome is stale
            if self.state == HALF_OPEN:
                self.probes_in_flight -= 1
                if verdict == "failure":
                    moves = self._move(OPEN, now, "probe failed", moves)
                elif verdict == "success":
                    self.probe_successes += 1
                    if self.probe_successes >= self.policy.probes_to_close:
                        moves = self._move(CLOSED, now, f"{self.probe_successes} probe(s) succeeded", moves)
            elif self.state == CLOSED and verdict != "ignored":
                self.window.add(now, verdict == "failure")
                reason = self.window.tripped(now)
                if reason is not None:
                    moves = self._move(OPEN, now, reason, moves)
        return moves

    def current(self, now: float) -> str:
        with self.lock:
            if self.state == OPEN and now >= self.opened_at + self.policy.open_seconds:
                return HALF_OPEN  # what the next caller will find
            return self.state


# --- the breaker ------------------------------------------------------------------------------
class CircuitBreaker(CallWrapper):
    """Guards calls with a breaker. Use `call(fn, ...)`, or `wrap(fn)` / `@breaker`; both take
    sync and async callables."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        counts_as_failure: Callable[[BaseException], bool] = is_provider_failure,
        clock: Clock = SYSTEM_CLOCK,
        on_event: EventSink | None = None,
        name: str = "breaker",
        state: BreakerState | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self.counts_as_failure = counts_as_failure
        self.clock = clock
        self.on_event = on_event
        self.name = name
        if getattr(state, "policy", self.policy) != self.policy:
            raise ValueError(f"state.policy must equal the breaker's policy, got {state.policy!r}")  # type: ignore[union-attr]
        self.store: BreakerState = state if state is not None else LocalState(self.policy)
        self._async_store = inspect.iscoroutinefunction(self.store.admit)

    def _refuse_sync(self) -> None:
        raise TypeError(f"breaker '{self.name}' keeps its state in an async store: guard async callables, "
                        "and use `await breaker.astate()` / `aadmit()` / `asettle()`")

    @property
    def state(self) -> str:
        """"closed", "open" or "half-open" (an open breaker whose time is up reads half-open)."""
        if self._async_store:
            self._refuse_sync()
        return self.store.current(self.clock.now())  # type: ignore[return-value]

    async def astate(self) -> str:
        """`state`, for any store (awaited where the store is async)."""
        current = self.store.current(self.clock.now())
        return await current if self._async_store else current  # type: ignore[misc,no-any-return]

    def _emit(self, now: float, moves: Moves, extra: Event | None = None) -> None:
        emit = self.on_event
        if emit is None:
            return
        for old, new, reason in moves:
            emit(StateChange(now, self.name, old, new, reason))
        if extra is not None:
            emit(extra)

    def _admitted(self, now: float, ticket: Ticket | None, retry_in: float, moves: Moves) -> Ticket:
        if ticket is None:
            retry_at = now + retry_in
            state = OPEN if retry_in > 0 else HALF_OPEN
            if self.on_event is not None:
                self._emit(now, moves, Rejected(now, self.name, state, retry_at))
            raise BreakerOpen(self.name, state, now, retry_at)
        if moves:
            self._emit(now, moves)
        return ticket

    # admit() and settle() are on every call's path, so they inline the common case.
    def admit(self) -> Ticket:
        """Admit one call or raise BreakerOpen. Pair every ticket with `settle`."""
        if self._async_store:
            self._refuse_sync()
        now = self.clock.now()
        ticket, retry_in, moves = self.store.admit(now)  # type: ignore[misc]
        if ticket is not None and not moves:
            return ticket
        return self._admitted(now, ticket, retry_in, moves)

    async def aadmit(self) -> Ticket:
        """`admit`, for any store (awaited where the store is async)."""
        now = self.clock.now()
        decision = self.store.admit(now)
        return self._admitted(now, *(await decision if self._async_store else decision))  # type: ignore[misc]

    def _verdict(self, ticket: Ticket, error: BaseException | None, now: float) -> Verdict:
        if error is not None:
            return "failure" if self.counts_as_failure(error) else "ignored"
        slow = self.policy.slow_call_seconds
        return "failure" if slow is not None and now - ticket[2] >= slow else "success"

    def _settled(self, ticket: Ticket, error: BaseException | None, now: float, verdict: Verdict, moves: Moves) -> None:
        _, admitted_in, started = ticket
        name = type(error).__name__ if error is not None else None
        self._emit(now, NO_MOVES, CallOutcome(started, self.name, admitted_in, verdict, now - started, name))
        self._emit(now, moves)

    def settle(self, ticket: Ticket, error: BaseException | None) -> None:
        """Record how an admitted call ended (error None for success)."""
        if self._async_store:
            self._refuse_sync()
        now = self.clock.now()
        verdict = self._verdict(ticket, error, now) if error is not None or self.policy.slow_call_seconds is not None else "success"
        moves = self.store.settle(ticket, verdict, now)
        if self.on_event is not None:
            self._settled(ticket, error, now, verdict, moves)  # type: ignore[arg-type]

    async def asettle(self, ticket: Ticket, error: BaseException | None) -> None:
        """`settle`, for any store (awaited where the store is async)."""
        now = self.clock.now()
        verdict = self._verdict(ticket, error, now)
        moves = self.store.settle(ticket, verdict, now)
        if self._async_store:
            moves = await moves  # type: ignore[misc]
        if self.on_event is not None:
            self._settled(ticket, error, now, verdict, moves)

    def _call_sync(self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        ticket = self.admit()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.settle(ticket, exc)
            raise
        if inspect.iscoroutine(result):
            # An async callable that does not look like one (a lambda returning a coroutine).
            # Nothing has run yet: give the slot back and take one when the coroutine is
            # awaited, so a coroutine that is never awaited holds no probe slot.
            self.store.settle(ticket, "ignored", self.clock.now())
            return self._admit_when_awaited(result)  # type: ignore[return-value]
        self.settle(ticket, None)
        return result

    async def _call_async(self, fn: Callable[..., Awaitable[R]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        ticket = await self.aadmit()
        try:
            pending = fn(*args, **kwargs)
        except BaseException as exc:
            await self.asettle(ticket, exc)
            raise
        return await self._settle_when_done(ticket, pending)

    async def _admit_when_awaited(self, pending: Coroutine[Any, Any, R]) -> R:
        try:
            ticket = self.admit()
        except BreakerOpen:
            pending.close()
            raise
        return await self._settle_when_done(ticket, pending)

    async def _settle_when_done(self, ticket: Ticket, pending: Awaitable[R]) -> R:
        try:
            result = await pending
        except BaseException as exc:
            await self.asettle(ticket, exc)
            raise
        await self.asettle(ticket, None)
        return result

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, policy={self.policy!r})"
