"""In-process transport: the openai SDK talks to a SimProvider without a socket.

    client = openai.OpenAI(api_key="sim", base_url="http://sim.local/v1",
                           http_client=httpx2.Client(transport=SimTransport(provider)))

Delays, hangs and drops are carried out on the provider's clock, so with a VirtualClock a
request that hangs for ten minutes times out after exactly the client's read timeout, instantly.
"""

from __future__ import annotations

import httpx2

from .provider import SimProvider, SimReply

__all__ = ["SimTransport"]


def _read_timeout(request: httpx2.Request) -> float | None:
    timeout = request.extensions.get("timeout") or {}
    return timeout.get("read")


def _plan(reply: SimReply, timeout: float | None) -> tuple[float, bool]:
    """(seconds to wait, whether the client gives up with a timeout after them)."""
    wait = reply.delay + (reply.hang_seconds if reply.action == "hang" else 0.0)
    if timeout is not None and wait > timeout:
        return timeout, True
    return wait, False


def _finish(reply: SimReply, request: httpx2.Request, timed_out: bool) -> httpx2.Response:
    if timed_out:
        raise httpx2.ReadTimeout("The read operation timed out (simulated provider)", request=request)
    if reply.action != "respond":  # a drop, or a hang the client outlasted: the server closes, as over HTTP
        raise httpx2.RemoteProtocolError("Server disconnected without sending a response.", request=request)
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
        return _finish(reply, request, timed_out)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        reply = self.provider.handle(request.method, request.url.raw_path.decode(), request.headers, await request.aread())
        wait, timed_out = _plan(reply, _read_timeout(request))
        if wait:
            await self.provider.clock.asleep(wait)
        return _finish(reply, request, timed_out)
