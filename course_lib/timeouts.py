"""Hard deadlines for agent runs: one deadline per run, passed down into every call it makes.

    deadline = Deadline(10, clock=clock, on_event=recorder)      # the whole run: 10 s
    with deadline_scope(deadline):                               # time_left() now reads it
        with deadline.bound(8, "model") as timeout:              # min(8, time left)
            reply = await client.chat.completions.create(model=m, messages=msgs, timeout=timeout)
        order = await deadline.run(lookup_order("4471"), "tool")  # cancelled when time runs out

What it guarantees:

- `Deadline(seconds)` fixes when a run must end, on an injected clock. `timeout(cap, stage)` is
  min(cap, time left), for the SDK call's own `timeout=`: the call itself stops then (a timeout
  *around* a blocking call does not stop it). With no time left it raises DeadlineExceeded and
  the call is never made.
- `bound(cap, stage)` (a context manager, `with` or `async with`) yields that timeout and turns
  a timeout raised inside (`openai.APITimeoutError`, `httpx2.TimeoutException`, `TimeoutError`)
  into DeadlineExceeded when the time left, not the cap, set it. When the cap set it the
  provider was too slow: its error passes through unchanged, for retry and breaker to see.
- `await run(awaitable, stage)` bounds an awaitable (a tool call) by the time left; on expiry it
  is cancelled and waited for (its `finally` blocks run), then DeadlineExceeded is raised.
- DeadlineExceeded is deliberately not a TimeoutError: a circuit breaker counts TimeoutError as
  the provider's failure, and our own deadline running out is not one. Raise it, do not turn it
  into an apology string: a failure returned as text is invisible to every error metric.
  Each cut emits one `events.DeadlineCut`.
- `deadline_scope(deadline)` makes it the current deadline for the code inside (a contextvar:
  asyncio tasks created inside inherit it, threads do not; the innermost scope wins).
  `current_deadline()` and `time_left()` read it; `Retrier(time_left=time_left)` then never
  starts a wait that would end at or after the deadline.
- `guard_stream(stream, StreamLimits(first_token, idle, total))` yields a stream's chunks and
  cuts it when the first chunk takes longer than `first_token`, a later one longer than `idle`
  after the previous, the whole stream longer than `total`, or the current deadline runs out. A
  cut closes the stream (so its HTTP connection is released), emits `events.StreamCut` and raises
  StreamCutError with the text that had arrived.

Limits: times are those of the injected clock (with a SystemClock, an SDK timeout fires within
the SDK's own precision). Nothing here can stop a thread: a blocking call stops only by the
timeout passed into it. `guard_stream` is for async streams; for a sync one, give the SDK the
idle limit as its read timeout.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx2
import openai

from ._wrapping import check
from .clock import SYSTEM_CLOCK, Clock, wait_for
from .events import DeadlineCut, EventSink, StreamCut

__all__ = ["Deadline", "DeadlineExceeded", "deadline_scope", "current_deadline", "time_left", "StreamLimits",
           "StreamCutError", "guard_stream", "chunk_text", "TIMEOUT_ERRORS"]

T = TypeVar("T")
CutReason = Literal["first_token", "idle", "total", "deadline"]

TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (openai.APITimeoutError, httpx2.TimeoutException, TimeoutError)
"""What a provider call raises when its own timeout runs out."""


class DeadlineExceeded(Exception):
    """A run's deadline ran out at `stage`. Not a TimeoutError: our deadline is not the provider's
    failure, and a breaker must not count it as one."""

    def __init__(self, stage: str, budget: float, elapsed: float, detail: str = "") -> None:
        self.stage, self.budget, self.elapsed, self.detail = stage, budget, elapsed, detail
        message = f"deadline of {budget:g}s exceeded at {stage} after {elapsed:.2f}s"
        super().__init__(message + (f": {detail}" if detail else ""))


# --- running an awaitable against a clock ----------------------------------------------------
class _TimeUp(Exception):
    """The time given to an awaitable ran out (it has been cancelled)."""


class _Raised(Exception):
    """Carries a TimeoutError the awaited work raised itself, so that it is not taken for the
    time running out."""

    def __init__(self, error: TimeoutError) -> None:
        self.error = error


_END = object()  # what _carried returns for an iterator's end: StopAsyncIteration cannot leave a task


async def _carried(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except StopAsyncIteration:
        return _END
    except TimeoutError as error:
        raise _Raised(error) from None


async def _within(clock: Clock, awaitable: Awaitable[Any], seconds: float) -> Any:
    """The awaitable's result, or _TimeUp after `seconds` on `clock` (it is then cancelled and
    waited for). Its own errors, TimeoutError included, pass through unchanged."""
    try:
        return await wait_for(clock, _carried(awaitable), seconds)
    except _Raised as carried:
        raise carried.error from carried.error.__cause__
    except TimeoutError:
        raise _TimeUp from None


def _discard(awaitable: Awaitable[Any]) -> None:
    """Close a coroutine that will never be awaited (Python would warn about it)."""
    if inspect.iscoroutine(awaitable):
        awaitable.close()


# --- the deadline ------------------------------------------------------------------------------
class Deadline:
    """A run's hard deadline: `budget` seconds from `started` (clock time), ending `at`."""

    def __init__(self, seconds: float, *, clock: Clock = SYSTEM_CLOCK, name: str = "run",
                 on_event: EventSink | None = None) -> None:
        check(isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0, "seconds",
              "a finite number > 0", seconds)
        self.budget = float(seconds)
        self.clock, self.name, self.on_event = clock, name, on_event
        self.started = clock.now()
        self.at = self.started + self.budget

    def remaining(self) -> float:
        """Seconds left, never below 0."""
        return max(0.0, self.at - self.clock.now())

    def elapsed(self) -> float:
        return self.clock.now() - self.started

    def expired(self) -> bool:
        return self.clock.now() >= self.at

    def check(self, stage: str) -> None:
        """Raise DeadlineExceeded if the deadline has passed (before starting `stage`)."""
        if self.expired():
            raise self.cut(stage)

    def timeout(self, cap: float | None, stage: str) -> float:
        """The timeout to give a call at `stage`: min(cap, time left); DeadlineExceeded if no time
        is left. `cap` (None: no cap) is the longest the call may take even with time to spare."""
        check(cap is None or (math.isfinite(cap) and cap > 0), "cap", "None or a finite number > 0", cap)
        left = self.remaining()
        if left <= 0:
            raise self.cut(stage)
        return left if cap is None else min(cap, left)

    def cut(self, stage: str, detail: str = "") -> DeadlineExceeded:
        """Record that the deadline cut `stage` (one DeadlineCut event) and return the exception
        to raise."""
        elapsed = self.elapsed()
        if self.on_event is not None:
            self.on_event(DeadlineCut(self.clock.now(), self.name, stage, self.budget, elapsed, detail))
        return DeadlineExceeded(stage, self.budget, elapsed, detail)

    async def run(self, awaitable: Awaitable[T], stage: str) -> T:
        """Await `awaitable` for at most the time left. On expiry it is cancelled (its cleanup
        runs) and DeadlineExceeded is raised; its own errors pass through unchanged."""
        left = self.remaining()
        if left <= 0:
            _discard(awaitable)
            raise self.cut(stage, "not started")
        try:
            result: T = await _within(self.clock, awaitable, left)
        except _TimeUp:
            raise self.cut(stage, "cancelled") from None
        return result

    def bound(self, cap: float | None, stage: str) -> _Bound:
        """A context manager yielding `timeout(cap, stage)` for a call made inside; a timeout error
        from that call becomes DeadlineExceeded when the time left (not the cap) set it."""
        return _Bound(self, cap, stage)

    def __repr__(self) -> str:
        return f"Deadline({self.budget:g}s, name={self.name!r}, remaining={self.remaining():.3f}s)"


class _Bound:
    """`Deadline.bound`: usable as `with` (sync or async code) and `async with`."""

    def __init__(self, deadline: Deadline, cap: float | None, stage: str) -> None:
        self.deadline, self.cap, self.stage = deadline, cap, stage
        self.by_deadline = False

    def __enter__(self) -> float:
        timeout = self.deadline.timeout(self.cap, self.stage)
        self.by_deadline = self.cap is None or self.deadline.remaining() <= self.cap
        return timeout

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.by_deadline and isinstance(error, TIMEOUT_ERRORS):
            raise self.deadline.cut(self.stage, type(error).__name__) from error

    async def __aenter__(self) -> float:
        return self.__enter__()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(kind, error, tb)


# --- the current deadline ----------------------------------------------------------------------
_CURRENT: ContextVar[Deadline | None] = ContextVar("course_lib_timeouts_deadline", default=None)


class _Scope:
    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self._tokens: list[Token[Deadline | None]] = []

    def __enter__(self) -> Deadline:
        self._tokens.append(_CURRENT.set(self.deadline))
        return self.deadline

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        _CURRENT.reset(self._tokens.pop())

    async def __aenter__(self) -> Deadline:
        return self.__enter__()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(kind, error, tb)


def deadline_scope(deadline: Deadline) -> _Scope:
    """`with deadline_scope(d):` (or `async with`) makes `d` the current deadline inside."""
    return _Scope(deadline)


def current_deadline() -> Deadline | None:
    """The deadline of the innermost `deadline_scope` around this code, if any."""
    return _CURRENT.get()


def time_left() -> float | None:
    """Seconds left on the current deadline (0 once passed), or None outside any scope: the hook
    `Retrier(time_left=...)` takes."""
    deadline = _CURRENT.get()
    return None if deadline is None else deadline.remaining()


# --- streams -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Seconds a stream may take: to its first chunk, between two chunks, and in all."""

    first_token: float
    idle: float
    total: float

    def __post_init__(self) -> None:
        for field in ("first_token", "idle", "total"):
            value = getattr(self, field)
            check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, field,
                  "a finite number > 0", value)


_WHAT = {"first_token": "no first chunk within {:g}s", "idle": "no chunk for {:g}s",
         "total": "still streaming after {:g}s", "deadline": "the run's deadline of {:g}s ran out"}


class StreamCutError(Exception):
    """A stream cut for `reason` ("first_token", "idle", "total" or "deadline") after the limit of
    `limit` seconds (for "deadline", the run's whole budget); `partial` is the text that had
    arrived, in `pieces` chunks that carried text."""

    def __init__(self, reason: CutReason, limit: float, partial: str, pieces: int) -> None:
        self.reason, self.limit, self.partial, self.pieces = reason, limit, partial, pieces
        super().__init__(f"stream cut ({reason}): {_WHAT[reason].format(limit)}; "
                         f"{pieces} piece(s), {len(partial)} characters had arrived")


def chunk_text(chunk: Any) -> str:
    """The text of an openai ChatCompletionChunk (`choices[0].delta.content`), or "" for a chunk
    without any (the role chunk, tool-call pieces, the usage chunk)."""
    choices = getattr(chunk, "choices", None)
    if not choices:
        return ""
    return getattr(getattr(choices[0], "delta", None), "content", None) or ""


def _next_limit(limits: StreamLimits, deadline: Deadline | None, started: float, last: float | None,
                now: float) -> tuple[CutReason, float, float]:
    """(reason, limit, seconds from now) of the limit that ends first for the next chunk. On a
    tie the stream's own limit is named before the total, and both before the deadline."""
    phase: tuple[CutReason, float, float] = (
        ("first_token", limits.first_token, started + limits.first_token - now) if last is None
        else ("idle", limits.idle, last + limits.idle - now))
    candidates = [phase, ("total", limits.total, started + limits.total - now)]
    if deadline is not None:
        candidates.append(("deadline", deadline.budget, deadline.remaining()))
    return min(candidates, key=lambda candidate: candidate[2])  # min keeps the first of equals


async def _close(stream: Any) -> None:
    """Close an openai AsyncStream (`close()`, which releases its connection), else `aclose()`."""
    close = getattr(stream, "close", None) or getattr(stream, "aclose", None)
    if close is not None:
        result = close()
        if inspect.isawaitable(result):
            await result


async def guard_stream(stream: AsyncIterable[T], limits: StreamLimits, *, clock: Clock = SYSTEM_CLOCK,
                       text_of: Callable[[T], str] = chunk_text, on_event: EventSink | None = None,
                       name: str = "stream") -> AsyncIterator[T]:
    """Yield `stream`'s chunks, each waited for with the limit that applies (and the current
    deadline's time left, if any), counted from the first iteration: the request itself, up to
    the response head, is bounded by the SDK call's own timeout (`Deadline.bound`). On a cut:
    close the stream, emit StreamCut, raise StreamCutError (from DeadlineExceeded, after a
    DeadlineCut, when the deadline cut it). The stream is closed too when the caller stops early
    or the stream fails. `text_of(chunk)` gives a chunk's text, for the partial text."""
    deadline = current_deadline()
    started, last = clock.now(), None
    parts: list[str] = []
    iterator, closed = aiter(stream), False
    try:
        while True:
            reason, limit, wait = _next_limit(limits, deadline, started, last, clock.now())
            try:
                if wait <= 0:
                    raise _TimeUp
                chunk = await _within(clock, anext(iterator), wait)
            except _TimeUp:
                await _close(stream)  # first: the connection goes back before anyone hears of the cut
                closed = True
                error, cause = _cut(reason, limit, "".join(parts), len(parts), deadline, clock, on_event, name)
                raise error from cause
            if chunk is _END:
                return
            last = clock.now()
            piece = text_of(chunk)
            if piece:
                parts.append(piece)
            yield chunk
    finally:
        if not closed:
            await _close(stream)


def _cut(reason: CutReason, limit: float, partial: str, pieces: int, deadline: Deadline | None, clock: Clock,
         on_event: EventSink | None, name: str) -> tuple[StreamCutError, DeadlineExceeded | None]:
    """The error for a cut stream, and its cause when the deadline cut it; the events of the cut."""
    if on_event is not None:
        on_event(StreamCut(clock.now(), name, reason, limit, pieces, len(partial)))
    cause = deadline.cut("stream", f"{pieces} piece(s) streamed") if reason == "deadline" and deadline else None
    return StreamCutError(reason, limit, partial, pieces), cause
