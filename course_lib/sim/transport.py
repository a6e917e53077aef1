"""In-process transport: the openai SDK talks to a SimProvider without a socket.

    client = openai.OpenAI(api_key="sim", base_url="http://sim.local/v1",
                           http_client=httpx2.Client(transport=SimTransport(provider)))

Delays, hangs and drops are carried out on the provider's clock, so with a VirtualClock a
request that hangs for ten minutes times out after exactly the client's read timeout, instantly.
A slow stream (a `slow_stream` fault) is a response body whose chunks come on that clock too:
each chunk due later than the read timeout allows raises `httpx2.ReadTimeout` after exactly that
timeout, as httpx does for a socket that stays silent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx2

from ..clock import Clock
from .provider import SimProvider, SimReply

__all__ = ["SimTransport"]


def _read_timeout(request: httpx2.Request) -> float | None:
    timeout = request.extensions.get("timeout") or {}
    return timeout.get("read")


def _bounded(wait: float, timeout: float | None) -> tuple[float, bool]:
    """(seconds to wait, whether the client gives up with a timeout after them)."""
    if timeout is not None and wait > timeout:
        return timeout, True
    return wait, False


def _plan(reply: SimReply, timeout: float | None) -> tuple[float, bool]:
    return _bounded(reply.delay + (reply.hang_seconds if reply.action == "hang" else 0.0), timeout)


class _PacedStream(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A streamed body whose chunks are due at set times on the provider's clock, counted from
    when the response head arrived (a client that reads late finds the chunks already there).

    One pass only, as a socket is: iterating again (the SDK drains what is left after [DONE])
    goes on from where the last pass stopped. Closing it ends the stream."""

    def __init__(self, chunks: list[bytes], delays: list[float], clock: Clock, request: httpx2.Request) -> None:
        self.chunks, self.clock, self.request = chunks, clock, request
        self.timeout = _read_timeout(request)
        self.due: list[float] = []
        at = clock.now()
        for delay in delays:
            at += delay
            self.due.append(at)
        self.sent = 0
        self.closed = False

    def _wait(self) -> tuple[float, bool]:
        """(seconds to wait for the next chunk, whether the read timeout runs out first)."""
        return _bounded(max(0.0, self.due[self.sent] - self.clock.now()), self.timeout)

    def _take(self, timed_out: bool) -> bytes:
        if timed_out:
            raise httpx2.ReadTimeout("The read operation timed out (simulated slow stream)", request=self.request)
        self.sent += 1
        return self.chunks[self.sent - 1]

    def __iter__(self) -> Iterator[bytes]:
        while not self.closed and self.sent < len(self.chunks):
            wait, timed_out = self._wait()
            if wait:
                self.clock.sleep(wait)
            yield self._take(timed_out)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.closed and self.sent < len(self.chunks):
            wait, timed_out = self._wait()
            if wait:
                await self.clock.asleep(wait)
            yield self._take(timed_out)

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def _finish(reply: SimReply, request: httpx2.Request, timed_out: bool, clock: Clock) -> httpx2.Response:
    if timed_out:
        raise httpx2.ReadTimeout("The read operation timed out (simulated provider)", request=request)
    if reply.action != "respond":  # a drop, or a hang the client outlasted: the server closes, as over HTTP
        raise httpx2.RemoteProtocolError("Server disconnected without sending a response.", request=request)
    if reply.chunks is not None and reply.chunk_delays is not None:
        stream = _PacedStream(reply.chunks, reply.chunk_delays, clock, request)
        return httpx2.Response(reply.status, headers=reply.headers, stream=stream, request=request)
    content = b"".join(reply.chunks) if reply.chunks is not None else reply.body
    return httpx2.Response(reply.status, headers=reply.headers, content=content, request=request)


class SimTransport(httpx2.BaseTransport, httpx2.AsyncBaseTransport):
    """An httpx2 transport (sync and async) backed by a SimProvider."""

    def __init__(self, provider: SimProvider) -> None:
        self.provider = provider

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        reply = self.provider.handle(request.method, request.url.raw_path.decode(), request.headers, request.read())
        wait, timed_out = _plan(reply, _read_timeout(request))
        if wait:
            self.provider.clock.sleep(wait)
        return _finish(reply, request, timed_out, self.provider.clock)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        reply = self.provider.handle(request.method, request.url.raw_path.decode(), request.headers, await request.aread())
        wait, timed_out = _plan(reply, _read_timeout(request))
        if wait:
            await self.provider.clock.asleep(wait)
        return _finish(reply, request, timed_out, self.provider.clock)
