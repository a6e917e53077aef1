"""Graceful shutdown: on SIGTERM, readiness turns 503 first; the server stops only later.

uvicorn on its own, at SIGTERM, closes its listener at once and gives in-flight requests up to
`timeout_graceful_shutdown` to finish. A load balancer that still believes the worker is ready
keeps routing new requests to it until its next probe, and those are refused. So the first
SIGTERM here only marks the service as draining (/readyz answers 503 from that moment) and keeps
serving for `delay` seconds, long enough for the balancer's probe to notice; then uvicorn's own
handler runs: the listener closes, in-flight requests finish within the drain timeout, the
worker exits. A second SIGTERM skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["drain_on_sigterm"]

log = logging.getLogger("course_lib.service")


def drain_on_sigterm(drain: Callable[[], None], delay: float) -> bool:
    """Put the draining step in front of the SIGTERM handler already installed (uvicorn's).
    Call from the server's event loop, in the main thread (a lifespan startup); returns False
    (and changes nothing) elsewhere, e.g. under a test client's worker thread."""
    if threading.current_thread() is not threading.main_thread():
        return False
    loop = asyncio.get_running_loop()
    server_handler = signal.getsignal(signal.SIGTERM)

    def stop_server(signum: int, frame: FrameType | None) -> None:
        if callable(server_handler):
            server_handler(signum, frame)
        else:  # nobody had installed one: behave as the default action would
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, stop_server)  # a second SIGTERM stops at once
        drain()
        log.warning("shutdown_started", extra={"delay": delay})
        loop.call_soon_threadsafe(loop.call_later, delay, stop_server, signum, frame)  # wakes the loop

    signal.signal(signal.SIGTERM, on_sigterm)
    return True
