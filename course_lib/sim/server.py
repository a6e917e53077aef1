"""The simulated provider as a real HTTP server on loopback, for curl, load tests, other
languages and the capstone service.

Built on the standard library's ThreadingHTTPServer rather than an ASGI app because a fault
plan must be able to drop a connection without any response, which ASGI cannot express.

    with serve(SimProvider(plan)) as server:       # background thread, free port
        client = openai.OpenAI(base_url=server.url, api_key="any")
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from .provider import SimProvider

__all__ = ["SimServer", "serve"]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.server.provider.handle(self.command, self.path, dict(self.headers.items()), body)
        wait = reply.delay + (reply.hang_seconds if reply.action == "hang" else 0.0)
        if wait and self.server.closing.wait(wait):
            reply.action = "drop"  # shutting down: abandon the request instead of holding the server
        if reply.action != "respond":
            self.close_connection = True  # hang over or drop: close without a byte
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.chunks is not None:
            self.send_header("connection", "close")
            self.end_headers()
            for chunk in reply.chunks:
                self.wfile.write(chunk)
                self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], provider: SimProvider, verbose: bool) -> None:
        super().__init__(address, _Handler)
        self.provider, self.verbose = provider, verbose
        self.closing = threading.Event()


class SimServer:
    """A running server. `url` is the base URL an OpenAI client needs (ending in /v1)."""

    def __init__(self, provider: SimProvider, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False) -> None:
        self.provider = provider
        self._server = _Server((host, port), provider, verbose)
        self.host, self.port = host, self._server.server_port
        self.url = f"http://{self.host}:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def start(self) -> SimServer:
        """Serve from a background thread."""
        # A short poll interval lets close() return promptly (shutdown waits for the next poll).
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="sim-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        """Stop at once, abandoning hanging requests."""
        self._server.closing.set()
        if self._thread is not None:  # serve_forever() in the caller's thread has already returned
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SimServer:
        return self.start() if self._thread is None else self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def serve(provider: SimProvider, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False) -> SimServer:
    """A server for `provider` on host:port (0 picks a free port); use it as a context manager."""
    return SimServer(provider, host, port, verbose=verbose)
