"""Retry with exponential backoff and jitter, for transient failures only.

    from course_lib.retry import retry, RetryPolicy

    @retry(policy=RetryPolicy(max_attempts=4, jitter="full"))
    def ask(client, prompt): ...

Works on `def` and `async def` callables alike. Only transient failures are retried (429 but
not an exhausted quota, 408, 409, 5xx, connection errors, timeouts); a server's Retry-After is
honoured (a longer one than the policy accepts ends the retries); an overall deadline bounds
the waiting; a `time_left` hook (e.g. `course_lib.timeouts.time_left`) lets the run's own deadline
stop the retries too; an optional `RetryBudget` stops a fleet of clients from turning an outage
into a retry storm. Build the OpenAI client with `max_retries=0` (see `course_lib.llm`) or every
retry here multiplies the SDK's own.
"""

from __future__ import annotations

import inspect
import itertools
import math
import random
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Literal, ParamSpec, TypeVar, overload

import openai

from ._wrapping import CallWrapper, check
from .clock import SYSTEM_CLOCK, Clock
from .events import Attempt, EventSink, GiveUp, Wait

__all__ = [
    "RetryPolicy",
    "RetryBudget",
    "Retrier",
    "retry",
    "is_transient",
    "retry_after_seconds",
    "JITTERS",
]

JitterName = Literal["none", "full", "equal", "decorrelated"]
JITTERS: tuple[JitterName, ...] = ("none", "full", "equal", "decorrelated")

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry. Every field is checked on construction."""

    max_attempts: int = 4
    """Attempts in total, the first one included."""
    base_delay: float = 0.5
    """Backoff before the first retry; it doubles for each further retry."""
    max_delay: float = 30.0
    """Cap on any single backoff wait."""
    deadline: float | None = 60.0
    """Seconds from the first attempt after which no retry starts; None for no limit."""
    jitter: JitterName = "full"
    """none: exact doubling; full: uniform(0, d); equal: d/2 + uniform(0, d/2);
    decorrelated: uniform(base, 3 * previous wait), capped."""
    max_retry_after: float = 60.0
    """Longest server-directed wait (Retry-After) we accept. A server asking for longer does not
    want us back soon: the retry gives up ("retry-after-too-long") rather than come back early."""

    def __post_init__(self) -> None:
        check(isinstance(self.max_attempts, int) and self.max_attempts >= 1, "max_attempts", ">= 1", self.max_attempts)
        check(math.isfinite(self.base_delay) and self.base_delay >= 0, "base_delay", ">= 0", self.base_delay)
        check(math.isfinite(self.max_delay) and self.max_delay >= self.base_delay, "max_delay", f">= base_delay ({self.base_delay})", self.max_delay)
        check(self.deadline is None or self.deadline > 0, "deadline", "> 0 or None", self.deadline)
        check(self.jitter in JITTERS, "jitter", f"one of {', '.join(JITTERS)}", self.jitter)
        check(math.isfinite(self.max_retry_after) and self.max_retry_after >= 0, "max_retry_after", ">= 0", self.max_retry_after)

    def backoff(self, retry_number: int, previous: float, rng: random.Random) -> float:
        """The wait before retry `retry_number` (1 = first retry); `previous` is the last wait."""
        if self.jitter == "decorrelated":
            return min(self.max_delay, rng.uniform(self.base_delay, max(self.base_delay, 3 * previous)))
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(retry_number - 1, 64))
        if self.jitter == "full":
            return rng.uniform(0, ceiling)
        if self.jitter == "equal":
            return ceiling / 2 + rng.uniform(0, ceiling / 2)
        return ceiling


# --- what is worth retrying ------------------------------------------------------------------
def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass if we wait: 408, 409, 429, 5xx, connection errors and
    timeouts. An exhausted quota is a 429 too, but waiting does not refill it."""
    if isinstance(exc, openai.APIStatusError):
        if exc.code == "insufficient_quota":
            return False
        status = exc.status_code
        return status in (408, 409, 429) or status >= 500
    return isinstance(exc, (openai.APIConnectionError, TimeoutError, ConnectionError))


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's requested wait, from `retry-after-ms` or `retry-after` (seconds or date)."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    text = headers.get("retry-after")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, OverflowError):
            return None
        if when.tzinfo is None:  # asctime dates and "-0000" carry no zone; HTTP dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        # An HTTP-date is wall-clock time by definition; this is its one legitimate use here.
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    return value if math.isfinite(value) and value >= 0 else None


# --- retry budget ----------------------------------------------------------------------------
class RetryBudget:
    """Retries may be at most `ratio` of the calls started in the last `window` seconds, plus
    `min_retries` per window so that a quiet client can still retry. When an outage makes every
    call fail, a fleet sharing this rule adds at most `ratio` extra load instead of multiplying
    it by the attempt count (the idea behind gRPC retry throttling and Finagle's RetryBudget).
    """

    def __init__(self, ratio: float = 0.2, *, min_retries: int = 10, window: float = 10.0, clock: Clock = SYSTEM_CLOCK) -> None:
        check(0 <= ratio <= 1, "ratio", "between 0 and 1", ratio)
        check(isinstance(min_retries, int) and min_retries >= 0, "min_retries", ">= 0", min_retries)
        check(window > 0, "window", "> 0", window)
        self.ratio, self.min_retries, self.window, self.clock = ratio, min_retries, window, clock
        self._calls: deque[float] = deque()
        self._retries: deque[float] = deque()
        self._lock = threading.Lock()

    def _forget_old(self, now: float) -> None:
        horizon = now - self.window
        for stamps in (self._calls, self._retries):
            while stamps and stamps[0] <= horizon:
                stamps.popleft()

    def record_call(self) -> None:
        """Count a new call (its first attempt)."""
        with self._lock:
            now = self.clock.now()
            self._forget_old(now)  # here too, or a service that never fails keeps every stamp
            self._calls.append(now)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        with self._lock:
            now = self.clock.now()
            self._forget_old(now)
            beyond_minimum = len(self._retries) + 1 - self.min_retries
            # Compared by division: 57/100 <= 0.57 holds, where 0.57 * 100 == 56.99999999999999.
            if beyond_minimum > 0 and (not self._calls or beyond_minimum / len(self._calls) > self.ratio):
                return False
            self._retries.append(now)
            return True

    def __repr__(self) -> str:
        return f"RetryBudget(ratio={self.ratio}, min_retries={self.min_retries}, window={self.window})"


# --- the retrier -----------------------------------------------------------------------------
def _describe(exc: BaseException) -> tuple[str, int | None]:
    return type(exc).__name__, getattr(exc, "status_code", None)


class _Run:
    """The state of one call across its attempts; shared by the sync and async loops."""

    __slots__ = ("retrier", "call_id", "started", "attempt", "previous_delay")

    def __init__(self, retrier: Retrier) -> None:
        self.retrier = retrier
        self.call_id = next(retrier._call_ids)
        self.started = retrier.clock.now()
        self.attempt = 0
        self.previous_delay = retrier.policy.base_delay
        if retrier.budget is not None:
            retrier.budget.record_call()

    def begin(self) -> float:
        self.attempt += 1
        return self.started if self.attempt == 1 else self.retrier.clock.now()

    def succeeded(self, t0: float) -> None:
        emit = self.retrier.on_event
        if emit is not None:
            emit(Attempt(t0, self.retrier.name, self.call_id, self.attempt, self.retrier.clock.now() - t0))

    def failed(self, exc: Exception, t0: float) -> float | None:
        """The wait before the next attempt, or None to give up (the caller re-raises)."""
        r, policy = self.retrier, self.retrier.policy
        now = r.clock.now()
        emit = r.on_event
        if emit is not None:
            name, status = _describe(exc)
            emit(Attempt(t0, r.name, self.call_id, self.attempt, now - t0, name, status))

        delay, why, give_up = 0.0, "backoff", None
        if not r.retry_on(exc):
            give_up = "not-retryable"
        elif self.attempt >= policy.max_attempts:
            give_up = "max-attempts"
        else:
            hinted = retry_after_seconds(exc)
            if hinted is not None:
                delay, why = hinted, "retry-after"
            else:
                delay = self.previous_delay = policy.backoff(self.attempt, self.previous_delay, r.rng)
            if why == "retry-after" and delay > policy.max_retry_after:
                give_up = "retry-after-too-long"
            elif (policy.deadline is not None and now + delay - self.started > policy.deadline) \
                    or self.wait_outlasts_time_left(delay):
                give_up = "deadline"
            elif r.budget is not None and not r.budget.try_spend():
                give_up = "budget"

        if give_up is not None:
            self.give_up(exc, give_up, now)
            return None
        if emit is not None:
            emit(Wait(now, r.name, self.call_id, self.attempt, delay, why))
        return delay

    def give_up(self, exc: Exception, reason: str, now: float) -> None:
        r = self.retrier
        if r.on_event is not None:
            r.on_event(GiveUp(now, r.name, self.call_id, self.attempt, reason, _describe(exc)[0]))
        if reason != "not-retryable":
            exc.add_note(f"course_lib.retry '{r.name}': gave up after {self.attempt} attempt(s) ({reason})")

    def wait_outlasts_time_left(self, delay: float) -> bool:
        """Whether a wait of `delay` would end at or after the caller's deadline (`time_left`)."""
        hook = self.retrier.time_left
        left = hook() if hook is not None else None
        return left is not None and delay >= left

    def out_of_time(self, exc: Exception) -> bool:
        """After a wait: whether `time_left` says no attempt may start now (0 or less left); if so
        the give-up is recorded, and the caller re-raises `exc`."""
        hook = self.retrier.time_left
        left = hook() if hook is not None else None
        if left is None or left > 0:
            return False
        self.give_up(exc, "deadline", self.retrier.clock.now())
        return True


class Retrier(CallWrapper):
    """Runs callables under a `RetryPolicy`. Use `call(fn, ...)` once, or `wrap(fn)` (also
    spelled `@retrier`) to get a function that retries every time; both accept sync and async.

    `time_left`: seconds left before the caller's own deadline, or None for none (asked after
    every failure; `course_lib.timeouts.time_left` reads the current `deadline_scope`). A wait
    that would end at or after that deadline is not started: the retrier gives up at once
    (GiveUp "deadline", the last error re-raised), as for the policy's own deadline; and no
    retry starts with nothing left. The first attempt is the caller's: code under a deadline
    checks it before its call (`Deadline.timeout` raises DeadlineExceeded, without a request).
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        retry_on: Callable[[BaseException], bool] = is_transient,
        budget: RetryBudget | None = None,
        clock: Clock = SYSTEM_CLOCK,
        on_event: EventSink | None = None,
        seed: int | None = None,
        name: str = "retry",
        time_left: Callable[[], float | None] | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.retry_on = retry_on
        self.budget = budget
        self.time_left = time_left
        self.clock = clock
        self.on_event = on_event
        self.rng = random.Random(seed)
        self.name = name
        self._call_ids = itertools.count(1)

    def _call_sync(self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        run = _Run(self)
        while True:
            t0 = run.begin()
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                delay = run.failed(exc, t0)
                if delay is None:
                    raise
                self.clock.sleep(delay)
                if run.out_of_time(exc):
                    raise
            else:
                if inspect.iscoroutine(result):
                    # An async callable that does not look like one (a lambda returning a
                    # coroutine): continue on the async path.
                    return self._call_async(fn, args, kwargs, run, (t0, result))  # type: ignore[arg-type,return-value]
                run.succeeded(t0)
                return result

    async def _call_async(
        self,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run: _Run | None = None,
        begun: tuple[float, Awaitable[R]] | None = None,
    ) -> R:
        """The async loop; `run` and `begun` carry over a first attempt the sync path started."""
        run = run or _Run(self)
        while True:
            if begun is not None:
                (t0, attempt), begun = begun, None
            else:
                t0, attempt = run.begin(), None
            try:
                result = await (attempt if attempt is not None else fn(*args, **kwargs))
            except Exception as exc:
                delay = run.failed(exc, t0)
                if delay is None:
                    raise
                await self.clock.asleep(delay)
                if run.out_of_time(exc):
                    raise
            else:
                run.succeeded(t0)
                return result

    def __repr__(self) -> str:
        return f"Retrier({self.policy!r}, name={self.name!r})"


@overload
def retry(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def retry(fn: None = None, /, **options: Any) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def retry(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Decorator: `@retry` with defaults, or `@retry(policy=..., clock=..., on_event=...)`
    taking the same keywords as `Retrier`."""
    retrier = Retrier(**options)
    return retrier.wrap(fn) if fn is not None else retrier.wrap
