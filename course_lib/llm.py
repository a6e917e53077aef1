"""One factory for OpenAI clients: the simulated provider by default, a real endpoint by opt-in.

    client = make_client()                        # simulated, in-process, offline
    client = make_client(SimProvider(plan, clock=clock))
    aclient = make_async_client(provider)
    client = make_client(provider, pacer=ProviderPacer(clock=clock))   # paced by x-ratelimit headers

A real endpoint is used only when asked for (`real=True`, or COURSE_LIB_REAL_LLM=1 in the
environment); its key is read from OPENAI_API_KEY and never written in code.

`max_retries` defaults to 0 because course_lib owns the retry policy. The SDK retries twice by
default, so a 3-attempt loop around a default client makes up to 3 x 3 = 9 calls.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
from openai._base_client import get_platform

from .clock import Clock
from .pacing import AsyncPacedTransport, PacedTransport, ProviderPacer
from .sim.provider import SimProvider
from .sim.transport import SimTransport

__all__ = ["LLMSettings", "make_client", "make_async_client", "SIM_BASE_URL"]

SIM_BASE_URL = "http://sim.local/v1"


@dataclass(frozen=True)
class LLMSettings:
    """Where calls go, read from the environment an operator controls."""

    real: bool
    api_key: str | None
    base_url: str | None

    @classmethod
    def from_env(cls, real: bool | None = None) -> LLMSettings:
        if real is None:
            real = os.environ.get("COURSE_LIB_REAL_LLM", "").strip().lower() in ("1", "true", "yes")
        return cls(real, os.environ.get("OPENAI_API_KEY") or None, os.environ.get("OPENAI_BASE_URL") or None)


def _real_settings(real: bool | None) -> LLMSettings | None:
    settings = LLMSettings.from_env(real)
    if not settings.real:
        return None
    if not settings.api_key:
        raise RuntimeError("OPENAI_API_KEY is not set: a real endpoint needs a key from the environment (or use the simulator)")
    return settings


def _paced(transport: Any, pacer: ProviderPacer | None, is_async: bool) -> Any:
    if pacer is None:
        return transport
    return AsyncPacedTransport(transport, pacer) if is_async else PacedTransport(transport, pacer)


def _client(sdk_class: type[Any], http_class: type[Any], provider: SimProvider | None, max_retries: int, timeout: float,
            real: bool | None, pacer: ProviderPacer | None = None) -> Any:
    if provider is not None and real:
        raise ValueError("real=True and a simulated provider were both given; pass one or the other")
    is_async = sdk_class is openai.AsyncOpenAI
    settings = _real_settings(real) if provider is None else None
    if settings is not None:
        if pacer is None:
            return sdk_class(api_key=settings.api_key, base_url=settings.base_url, max_retries=max_retries,
                             timeout=timeout)
        network = httpx2.AsyncHTTPTransport() if is_async else httpx2.HTTPTransport()
        default_http = openai.DefaultAsyncHttpxClient if is_async else openai.DefaultHttpxClient
        return sdk_class(api_key=settings.api_key, base_url=settings.base_url, max_retries=max_retries, timeout=timeout,
                         http_client=default_http(transport=_paced(network, pacer, is_async)))
    provider = provider if provider is not None else SimProvider()
    if pacer is not None and pacer.clock is not provider.clock:
        raise ValueError("pacer.clock must be the provider's clock, or the pacer waits on a different time")
    client = sdk_class(api_key="sim-key", base_url=SIM_BASE_URL, max_retries=max_retries, timeout=timeout,
                       http_client=http_class(transport=_paced(SimTransport(provider), pacer, is_async)))
    _on_simulated_time(client, provider.clock)
    return client


def _on_simulated_time(client: Any, clock: Clock) -> None:
    """Make the SDK wait on the simulator's clock, so that a VirtualClock stays deterministic.

    Two SDK internals use real time: the waits between its own retries (time.sleep or
    anyio.sleep), and, for the async client, a worker thread that detects the platform on the
    first request (the loop looks idle meanwhile, so virtual time would jump at a random moment).
    These are private attributes of openai 3.x; tests/test_sim.py fails if they change.
    """

    def wait_before_retry(*, retries_taken: int, max_retries: int, options: Any, response: Any) -> float:
        headers = response.headers if response is not None else None
        return client._calculate_retry_timeout(max_retries - retries_taken, options, headers)  # type: ignore[no-any-return]

    if isinstance(client, openai.AsyncOpenAI):
        client._platform = _platform()

        async def sleep_for_retry_async(**kwargs: Any) -> None:
            await clock.asleep(wait_before_retry(**kwargs))

        client._sleep_for_retry = sleep_for_retry_async  # type: ignore[method-assign]
    else:
        client._sleep_for_retry = lambda **kwargs: clock.sleep(wait_before_retry(**kwargs))


def make_client(provider: SimProvider | None = None, *, max_retries: int = 0, timeout: float = 30.0,
                real: bool | None = None, pacer: ProviderPacer | None = None) -> openai.OpenAI:
    """A sync client: the simulated `provider` (a fresh one if None) unless a real one is opted in
    (`real=True`, or COURSE_LIB_REAL_LLM=1 when no provider is given). A `pacer` (course_lib.pacing)
    waits before each request the provider's x-ratelimit headers say it would refuse."""
    client: openai.OpenAI = _client(openai.OpenAI, httpx2.Client, provider, max_retries, timeout, real, pacer)
    return client


def make_async_client(provider: SimProvider | None = None, *, max_retries: int = 0, timeout: float = 30.0,
                      real: bool | None = None, pacer: ProviderPacer | None = None) -> openai.AsyncOpenAI:
    """The async twin of `make_client`."""
    client: openai.AsyncOpenAI = _client(openai.AsyncOpenAI, httpx2.AsyncClient, provider, max_retries, timeout, real,
                                         pacer)
    return client


@functools.cache
def _platform() -> Any:
    return get_platform()
