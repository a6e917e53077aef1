"""The simulated provider as a real HTTP server on loopback, for curl, load tests, other
languages and the capstone service.

A small HTTP/1.1 server on asyncio streams rather than an ASGI app, because a fault plan must be
able to drop a connection without any response, which ASGI cannot express. One event loop serves
every connection (no thread per connection, so hundreds of clients cost little and `close()` can
abandon hanging requests at once). `SimProvider.handle` does the work and no I/O; it runs inline
on the loop (about 0.2 ms for a small request, and it holds the provider's lock anyway). Delays,
hangs and the pace of a slow stream are real time here, whatever clock the provider has.

    with serve(SimProvider(plan)) as server:       # background thread, free port
        client = openai.OpenAI(base_url=server.url, api_key="any")

A client's malformed request gets an OpenAI-style JSON error (never a traceback, never a wait
without end): reads of a request body time out with a 408, idle keep-alive connections close.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import threading
import time
from contextlib import suppress
from email.utils import formatdate
from http import HTTPStatus
from types import TracebackType
from typing import Any

from .provider import ApiError, SimProvider, SimReply

__all__ = ["SimServer", "serve"]

BACKLOG = 1024  # the standard library's 5 refused most of 200 clients connecting at once
HEAD_LIMIT = 64 * 1024  # request line plus headers; beyond it, a 431
MAX_BODY = 32 * 1024 * 1024
PIECE = 1024 * 1024  # a body is read in pieces, each within body_timeout of the last

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # method and header names (RFC 9110 token)
_TARGET = re.compile(r"[!-~]+")
_FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
_DIGITS = re.compile(r"[0-9]{1,18}")  # more digits may not fit in 64 bits: a 400, not a 413
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_PHRASES = {status.value: status.phrase for status in HTTPStatus}


class _Refusal(Exception):
    """A request the server turns down before the provider sees it; the connection closes after."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SimServer:
    """A running server. `url` is the base URL an OpenAI client needs (ending in /v1).

    `body_timeout`: seconds a request body may stall before a 408; `keep_alive`: seconds an idle
    connection is kept; `max_body`: larger bodies get a 413."""

    def __init__(self, provider: SimProvider, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False,
                 body_timeout: float = 2.0, keep_alive: float = 5.0, max_body: int = MAX_BODY) -> None:
        self.provider, self.verbose = provider, verbose
        self.body_timeout, self.keep_alive, self.max_body = body_timeout, keep_alive, max_body
        # Listening from here on, so a busy port fails now and clients may connect before start().
        self._sock = socket.create_server((host, port), backlog=BACKLOG, reuse_port=False)
        self.host, self.port = host, self._sock.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}/v1"
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # orders close() against the loop starting in another thread
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> SimServer:
        """Serve from a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="sim-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until close()."""
        asyncio.run(self._main())

    def close(self) -> None:
        """Stop at once, abandoning hanging requests (their connections close without a byte)."""
        with self._lock:
            self._closed = True
            loop, stop = self._loop, self._stop
            if loop is None or stop is None:
                self._sock.close()  # never served
            else:
                with suppress(RuntimeError):  # the loop has already finished
                    loop.call_soon_threadsafe(stop.set)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> SimServer:
        return self.start() if self._thread is None else self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def _main(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            server = await asyncio.start_server(self._connection, sock=self._sock, backlog=BACKLOG, limit=HEAD_LIMIT)
            try:
                await self._stop.wait()
            finally:
                server.close()
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            self._sock.close()

    # --- one connection -----------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection. Never raises, nor ends cancelled: asyncio would print a traceback."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (Exception, asyncio.CancelledError):
            pass  # the client went away or idled past keep_alive, or close() abandons the request
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._exchange(reader, writer):
                pass
        except _Refusal as refusal:
            await self._refuse(reader, writer, refusal.status, str(refusal))
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception as bug:  # a bug here must look like one, not like a dropped connection
            await self._refuse(reader, writer, 500, f"The simulator's HTTP server failed on this request ({type(bug).__name__}: {bug}).")

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request, answer it; whether the connection stays open for another."""
        try:
            async with asyncio.timeout(self.keep_alive):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _Refusal(431, f"The request line and headers exceed {HEAD_LIMIT} bytes.") from None
        except asyncio.IncompleteReadError:
            return False  # closed between requests (or mid-head): nobody to answer
        method, target, version, headers = _parse_head(head)
        body = await self._read_body(reader, writer, headers)
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()

        reply = self.provider.handle("GET" if method == "HEAD" else method, target, headers, body)
        wait = reply.delay + (reply.hang_seconds if reply.action == "hang" else 0.0)
        if wait:
            await asyncio.sleep(wait)  # close() cancels this: the connection closes without a byte
        if reply.action != "respond":
            self._log(writer, f"{method} {target} {version}", "-")
            return False  # a drop, or a hang that ran its course: close without a byte
        self._log(writer, f"{method} {target} {version}", reply.status)
        if reply.chunks is not None:  # a stream: its end is the end of the connection
            writer.write(self._encode(reply, close=True, body=False))
            await writer.drain()
            for chunk, delay in zip(reply.chunks, reply.chunk_delays or [0.0] * len(reply.chunks)):
                if delay and not await self._client_waits(reader, delay):
                    return False  # it gave up on a slow stream: close without sending the rest
                writer.write(chunk)
                await writer.drain()  # each event leaves now (asyncio sets TCP_NODELAY)
            return False
        writer.write(self._encode(reply, close=not keep, body=method != "HEAD"))
        await writer.drain()
        return keep

    @staticmethod
    async def _client_waits(reader: asyncio.StreamReader, seconds: float) -> bool:
        """Let `seconds` pass before the next chunk of a slow stream; False as soon as the client
        closes its side instead (a client that timed out), so a long stall does not hold the
        connection for nobody."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    if not await reader.read(PIECE):
                        return False
            except TimeoutError:
                return True
        return True

    async def _read_body(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]) -> bytes:
        length, coding = headers.get("content-length"), headers.get("transfer-encoding")
        if coding is not None and length is not None:
            raise _Refusal(400, "Send either Content-Length or Transfer-Encoding, not both.")
        if coding is not None and coding.lower() != "chunked":
            raise _Refusal(501, f"Transfer-Encoding {coding!r} is not supported; send the body plain or chunked.")
        if length is not None:
            if not _DIGITS.fullmatch(length):
                raise _Refusal(400, f"Invalid Content-Length header {length!r}: expected a whole number of bytes.")
            if int(length) > self.max_body:
                raise _Refusal(413, f"Content-Length {length} exceeds the largest request body accepted, {self.max_body} bytes.")
            if int(length) == 0:
                return b""
        elif coding is None:
            return b""
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits a second for this before a large body
        if length is not None:
            return await self._read_exactly(reader, int(length), "by its Content-Length")
        return await self._read_chunked(reader)

    async def _read_exactly(self, reader: asyncio.StreamReader, size: int, what: str) -> bytes:
        """`size` bytes, each piece arriving within body_timeout (a 408 otherwise)."""
        pieces: list[bytes] = []
        got = 0
        while got < size:
            try:
                async with asyncio.timeout(self.body_timeout):
                    piece = await reader.read(min(size - got, PIECE))
            except TimeoutError:
                raise _Refusal(408, f"The request body stopped arriving: {got} of {size} bytes announced {what} "
                                    f"were received, then nothing for {self.body_timeout:g} s.") from None
            if not piece:
                raise asyncio.IncompleteReadError(b"".join(pieces), size)  # the client left: nobody to answer
            pieces.append(piece)
            got += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _read_line(self, reader: asyncio.StreamReader) -> bytes:
        try:
            async with asyncio.timeout(self.body_timeout):
                return await reader.readuntil(b"\r\n")
        except TimeoutError:
            raise _Refusal(408, f"The chunked request body stopped arriving for {self.body_timeout:g} s.") from None
        except asyncio.LimitOverrunError:
            raise _Refusal(400, "Malformed chunked request body: a chunk-size or trailer line is too long.") from None

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        """Decode Transfer-Encoding: chunked (chunk extensions and trailer fields are ignored)."""
        pieces: list[bytes] = []
        total = 0
        while True:
            line = await self._read_line(reader)
            size = line[:-2].split(b";", 1)[0].strip(b" \t")
            if not _HEX.fullmatch(size):
                raise _Refusal(400, f"Malformed chunked request body: {line[:40]!r} is not a chunk-size line.")
            if not int(size, 16):
                break
            total += int(size, 16)
            if total > self.max_body:
                raise _Refusal(413, f"The chunked request body exceeds the largest accepted, {self.max_body} bytes.")
            chunk = await self._read_exactly(reader, int(size, 16) + 2, "by a chunk-size line")
            if chunk[-2:] != b"\r\n":
                raise _Refusal(400, "Malformed chunked request body: a chunk is longer than its chunk-size line says.")
            pieces.append(chunk[:-2])
        trailers = 0
        while (line := await self._read_line(reader)) != b"\r\n":
            trailers += len(line)
            if trailers > HEAD_LIMIT:
                raise _Refusal(400, f"Malformed chunked request body: its trailer fields exceed {HEAD_LIMIT} bytes.")
        return b"".join(pieces)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        """Answer with a JSON error and close; first read what the client still sends, for a
        second at most, so that closing with unread data does not reset the connection before
        the client has read the answer."""
        self._log(writer, "(refused)", status)
        writer.write(self._encode(SimReply.refusal(ApiError(status, message)), close=True, body=True))
        with suppress(Exception):
            writer.write_eof()
            async with asyncio.timeout(1.0):
                while await reader.read(PIECE):
                    pass

    # --- output -------------------------------------------------------------------------------
    _date: tuple[int, str] = (0, "")

    def _encode(self, reply: SimReply, *, close: bool, body: bool) -> bytes:
        """Status line, headers and body as one buffer, for one write: a separate small write
        for the body meets Nagle's algorithm and the client's delayed ACK, and every keep-alive
        response then waits 40 ms. A stream (`reply.chunks`) runs to the end of the connection."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        lines = [f"HTTP/1.1 {reply.status} {_PHRASES.get(reply.status, '')}", f"date: {self._date[1]}"]
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        if reply.chunks is None:
            lines.append(f"content-length: {len(reply.body)}")
        if close:
            lines.append("connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + reply.body if body else head

    def _log(self, writer: asyncio.StreamWriter, request: str, status: int | str) -> None:
        """With verbose=True, one line per request on stderr, as the standard library's server wrote."""
        if self.verbose:
            peer = (writer.get_extra_info("peername") or ("-",))[0]
            stamp = time.strftime("%d/%b/%Y %H:%M:%S")
            print(f'{peer} - - [{stamp}] "{request}" {status} -', file=sys.stderr, flush=True)


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """(method, target, version, headers with lower-case names) from the bytes up to the blank line."""
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")[:-2]
    parts = lines[0].split(" ") if lines else []
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]) or not parts[2].startswith("HTTP/"):
        raise _Refusal(400, f"Malformed request line {(lines or [''])[0][:80]!r}: expected `METHOD /path HTTP/1.1`.")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _Refusal(505, f"{version[:20]} is not supported; send HTTP/1.1.")
    if "://" in target and not target.startswith("/"):  # absolute-form, as sent to a proxy
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        value = value.strip(" \t")
        if not colon or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise _Refusal(400, f"Malformed header line {line[:80]!r}: expected `Name: value`.")
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return method, target, version, headers


def serve(provider: SimProvider, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False,
          body_timeout: float = 2.0, keep_alive: float = 5.0, max_body: int = MAX_BODY) -> SimServer:
    """A server for `provider` on host:port (0 picks a free port); use it as a context manager."""
    return SimServer(provider, host, port, verbose=verbose, body_timeout=body_timeout, keep_alive=keep_alive, max_body=max_body)
