"""What every call-wrapping pattern shares: sync/async plumbing and configuration checks."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeGuard, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def check(ok: bool, field: str, limit: str, value: object) -> None:
    """Refuse a configuration value with a message naming the field and the limit."""
    if not ok:
        raise ValueError(f"{field} must be {limit}, got {value!r}")


def is_whole(value: object) -> TypeGuard[int]:
    """An int, and not a bool (which Python counts as one: True would pass for 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite(value: object) -> TypeGuard[float]:
    """An int or a float, not a bool, and neither infinite nor NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for `async def` functions, also behind decorators that keep `__wrapped__` (the openai
    SDK's async methods are plain functions wrapping an `async def`)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(inspect.unwrap(fn))


class CallWrapper:
    """Gives a pattern `call(fn, ...)`, `wrap(fn)` and `@instance` for `def` and `async def`
    alike; the pattern supplies `_call_sync` and `_call_async`. A callable that hides that it is
    async (a lambda returning a coroutine) reaches `_call_sync`, which must hand it over."""

    def _call_sync(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def _call_async(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def call(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Call `fn(*args, **kwargs)` through the pattern; for an async `fn`, an awaitable."""
        if is_async_callable(fn):
            return self._call_async(fn, args, kwargs)  # type: ignore[arg-type,return-value]
        return self._call_sync(fn, args, kwargs)  # type: ignore[no-any-return]

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """A function like `fn` (sync or async) that goes through the pattern on every call."""
        if is_async_callable(fn):

            @functools.wraps(fn)
            async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
                return await self._call_async(fn, args, kwargs)  # type: ignore[arg-type]

            return wrapped_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return self._call_sync(fn, args, kwargs)

        return wrapped  # type: ignore[return-value]

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        return self.wrap(fn)
