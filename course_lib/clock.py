"""Injected time.

Every pattern takes a `Clock` instead of calling `time` or `asyncio` directly, so the same code
runs on real time in a service and on virtual time in notebooks and tests, where a ten-minute
outage replays in milliseconds and identically on every run.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "VirtualClock", "wait_for"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time plus the two ways to wait on it."""

    def now(self) -> float:
        """Seconds on a monotonic scale; only differences are meaningful."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch, for timestamps people read (never for intervals)."""
        ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time: `time.monotonic` for intervals, so NTP steps cannot bend them; `time.time`
    only for timestamps."""

    now = staticmethod(time.monotonic)
    wall = staticmethod(time.time)
    sleep = staticmethod(time.sleep)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


class VirtualClock:
    """Time that only moves when someone sleeps on it.

    `sleep` advances time at once. `asleep` parks the task; once the event loop has nothing
    else ready to run, the earliest sleeper (ties broken by arrival order) is woken and time
    jumps to its deadline. Many concurrent async sleepers therefore wake in a fixed order,
    the same on every run.

    `wall()` is a fixed date plus `now()`, so timestamps replay identically too.

    Work a task waits for in a thread (or on a real socket) is invisible to the clock: while it
    runs, the loop looks idle and time may jump. Keep virtually-timed code free of threads.
    """

    def __init__(self, start: float = 0.0, *, wall_start: float = 1_767_225_600.0) -> None:
        """`wall_start` is the Unix time at which `now()` reads 0 (default 2026-01-01T00:00Z)."""
        self._now = float(start)
        self._wall_start = float(wall_start)
        self._lock = threading.Lock()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._jump_pending_on: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall_start + self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (must be >= 0)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        with self._lock:
            self._now += seconds

    sleep = advance

    async def asleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        loop = asyncio.get_running_loop()
        wake = loop.create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), wake))
        self._schedule_jump(loop)
        await wake

    def _schedule_jump(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._jump_pending_on is not loop:
            self._jump_pending_on = loop
            loop.call_soon(self._jump, loop, 0)

    def _jump(self, loop: asyncio.AbstractEventLoop, spins: int) -> None:
        # Forget the sleepers nobody waits for any more (a timer that lost its race, a task
        # cancelled mid-sleep, a loop that has ended): a clock with none left keeps no jump
        # pending, so an idle clock never holds up another one on the same loop.
        while self._sleepers and _gone(self._sleepers[0][2], loop):
            heapq.heappop(self._sleepers)
        if not self._sleepers:
            self._jump_pending_on = None
            return
        # Let every runnable task go first: it may be about to sleep for less than the
        # current earliest sleeper. CPython's loop exposes its ready queue; other loops get a
        # bounded number of passes instead. Other clocks' jumps do not count as runnable work,
        # or two clocks on one loop would each wait for the other for ever.
        ready = getattr(loop, "_ready", None)
        if _busy(ready) if ready is not None else spins < 100:
            loop.call_soon(self._jump, loop, spins + 1)
            return
        self._jump_pending_on = None
        while self._sleepers:
            deadline, _, wake = heapq.heappop(self._sleepers)
            if wake.cancelled() or wake.get_loop() is not loop:
                continue  # cancelled, or left behind by an event loop that has ended
            with self._lock:
                self._now = max(self._now, deadline)
            wake.set_result(None)
            break
        if self._sleepers:
            self._schedule_jump(loop)

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now:g})"


def _gone(wake: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> bool:
    return wake.cancelled() or wake.get_loop() is not loop


def _busy(ready: Any) -> bool:
    """True if the loop's ready queue holds anything but VirtualClock jumps."""
    return any(getattr(getattr(handle, "_callback", None), "__func__", None) is not VirtualClock._jump
               for handle in ready)


async def wait_for(clock: Clock, awaitable: Awaitable[T], seconds: float) -> T:
    """`asyncio.wait_for` on an injected clock: the result of `awaitable`, or TimeoutError after
    `seconds` on `clock` (the awaitable is then cancelled and waited for). `asyncio.wait_for`
    times on the event loop's own clock, which a VirtualClock does not move."""
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    work = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.asleep(seconds))
    try:
        await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    if work.cancelled() and not timer.cancelled() and timer.done():
        raise TimeoutError(f"no result within {seconds:g}s")
    return work.result()
