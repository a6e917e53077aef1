"""The injected clocks, and waiting with a time limit on either of them."""

from __future__ import annotations

import asyncio

import pytest

from course_lib.clock import SystemClock, VirtualClock, wait_for


async def test_wait_for_on_a_virtual_clock_cuts_a_hang_at_exactly_the_limit() -> None:
    clock, cleaned_up = VirtualClock(), []

    async def hang() -> None:
        try:
            await clock.asleep(600)
        finally:
            cleaned_up.append(clock.now())

    with pytest.raises(TimeoutError, match="within 2.5s"):
        await wait_for(clock, hang(), 2.5)
    assert clock.now() == 2.5
    assert cleaned_up == [2.5]  # the work was cancelled and finished before wait_for returned


async def test_wait_for_returns_the_result_when_it_comes_first_and_leaves_the_clock_there() -> None:
    clock = VirtualClock()

    async def answer() -> str:
        await clock.asleep(1.0)
        return "done"

    assert await wait_for(clock, answer(), 3.0) == "done"
    assert clock.now() == 1.0
    await clock.asleep(5.0)  # the cancelled timer does not wake anyone at 3.0
    assert clock.now() == 6.0


async def test_wait_for_passes_the_works_own_error_through() -> None:
    async def fail() -> None:
        raise KeyError("inner")

    with pytest.raises(KeyError, match="inner"):
        await wait_for(VirtualClock(), fail(), 1.0)


async def test_wait_for_works_on_real_time_too() -> None:
    with pytest.raises(TimeoutError):
        await wait_for(SystemClock(), asyncio.sleep(10), 0.01)
    assert await wait_for(SystemClock(), asyncio.sleep(0, "ok"), 1.0) == "ok"


async def test_cancelling_the_waiter_cancels_the_work() -> None:
    clock, seen = VirtualClock(), []

    async def work() -> None:
        try:
            await clock.asleep(100)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    waiter = asyncio.ensure_future(wait_for(clock, work(), 50))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert seen == ["cancelled"]


async def test_an_idle_clock_does_not_hold_up_another_on_the_same_loop() -> None:
    first, second = VirtualClock(), VirtualClock()
    with pytest.raises(TimeoutError):
        await wait_for(first, first.asleep(600), 1.0)  # leaves a cancelled sleeper on `first`
    await asyncio.wait_for(second.asleep(5), timeout=2)  # real-time guard: it hung for ever
    assert second.now() == 5


async def test_two_clocks_in_use_at_once_both_move() -> None:
    first, second = VirtualClock(), VirtualClock()
    await asyncio.wait_for(asyncio.gather(first.asleep(3), second.asleep(7)), timeout=2)
    assert (first.now(), second.now()) == (3, 7)
