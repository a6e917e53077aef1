"""What every call-wrapping pattern shares: sync/async plumbing and configuration checks."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def check(ok: bool, field: str, limit: str, value: object) -> None:
    """Refuse a configuration value with a message naming the field and the limit."""
    if not ok:
        raise ValueError(f"{field} must be {limit}, got {value!r}")


class CallWrapper:
    """Gives a pattern `call(fn, ...)`, `wrap(fn)` and `@instance` for `def` and `async def`
    alike; the pattern supplies `_call_sync` and `_call_async`. Callables that look synchronous
    but return a coroutine (the openai SDK's async methods) are the pattern's `_call_sync` to
    hand over to the async path."""

    def _call_sync(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def _call_async(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def call(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Call `fn(*args, **kwargs)` through the pattern; for an async `fn`, an awaitable."""
        if inspect.iscoroutinefunction(fn):
            return self._call_async(fn, args, kwargs)  # type: ignore[return-value]
        return self._call_sync(fn, args, kwargs)  # type: ignore[no-any-return]

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """A function like `fn` (sync or async) that goes through the pattern on every call."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
                return await self._call_async(fn, args, kwargs)

            return wrapped_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return self._call_sync(fn, args, kwargs)

        return wrapped  # type: ignore[return-value]

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        return self.wrap(fn)
