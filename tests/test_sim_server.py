"""The simulated provider over real HTTP: the openai SDK's own HTTP client, real sockets,
real time (so the windows and timeouts here are short), and the `course-lib` command."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import openai
import pytest

from course_lib.sim import SimProvider
from course_lib.sim.server import SimServer, serve

HELLO = [{"role": "user", "content": "Hello over HTTP"}]


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[SimServer]:
    faults = getattr(request, "param", [])
    with serve(SimProvider({"faults": faults})) as running:
        yield running


def sdk(server: SimServer, timeout: float = 5.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="sk-local", max_retries=0, timeout=timeout)


def test_real_sdk_gets_a_completion_and_a_stream(server: SimServer) -> None:
    client = sdk(server)
    reply = client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.usage.completion_tokens > 0 and reply.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens
    assert [m.id for m in client.models.list()][:2] == ["gpt-4o", "gpt-4o-mini"]


@pytest.mark.parametrize(
    ("server", "error", "check"),
    [
        ([{"kind": "outage", "status": 502}], openai.InternalServerError, lambda e: e.status_code == 502),
        ([{"kind": "rate_limit", "retry_after": 1.5}], openai.RateLimitError, lambda e: e.response.headers["retry-after-ms"] == "1500"),
        ([{"kind": "quota"}], openai.RateLimitError, lambda e: e.code == "insufficient_quota"),
        ([{"kind": "drop"}], openai.APIConnectionError, lambda e: not isinstance(e, openai.APITimeoutError)),
        ([{"kind": "hang", "seconds": 30}], openai.APITimeoutError, lambda e: True),
    ],
    indirect=["server"],
    ids=["outage", "rate_limit", "quota", "drop", "hang"],
)
def test_each_fault_reaches_the_sdk_as_its_exception_class(server: SimServer, error: type, check) -> None:
    started = time.monotonic()
    with pytest.raises(error) as raised:
        sdk(server, timeout=0.3).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert check(raised.value)
    assert time.monotonic() - started < 5


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_malformed_requests_get_openai_style_json_errors(server: SimServer) -> None:
    url, auth = server.url + "/chat/completions", {"Authorization": "Bearer k", "Content-Type": "application/json"}
    status, body = post(url, b"{not json", auth)
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = post(url, json.dumps({"model": "gpt-4o", "messages": HELLO}).encode(), {"Content-Type": "application/json"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = post(url, json.dumps({"model": "gpt-4o"}).encode(), auth)
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = post(url, json.dumps({"model": "nope", "messages": HELLO}).encode(), auth)
    assert status == 404 and body["error"]["code"] == "model_not_found"


# --- raw HTTP: what the SDK never sends, but a server must survive --------------------------------
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": HELLO}).encode()
AUTH = b"Authorization: Bearer k\r\nContent-Type: application/json\r\n"


def chat_request(body: bytes = CHAT, extra: bytes = b"") -> bytes:
    return b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\n" + AUTH + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


def connect(server: SimServer, timeout: float = 2.0) -> socket.socket:
    """A socket whose every read gives up after `timeout`: a server that never answers fails the test."""
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_response(stream: BinaryIO, method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    """One response from `stream` (one buffered reader per connection: a new reader per response
    would lose a pipelined response that the previous one had read ahead)."""
    status_line = stream.readline()
    if not status_line:
        raise ConnectionError("closed without a response")
    version, status, _ = status_line.decode("latin-1").split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, colon, value = line.decode("latin-1").partition(":")
        assert colon and name == name.strip(), line
        headers[name.lower()] = value.strip()
    if method == "HEAD" or status == "100":
        return int(status), headers, b""
    body = stream.read(int(headers["content-length"])) if "content-length" in headers else stream.read()
    return int(status), headers, body


def exchange(server: SimServer, raw: bytes, timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    with connect(server, timeout) as sock, sock.makefile("rb") as stream:
        sock.sendall(raw)
        return read_response(stream)


def closed_without_a_byte(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def assert_json_error(status: int, body: bytes, expected: int, *words: str) -> None:
    assert status == expected, body
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None and error["code"] is None
    assert all(word.lower() in error["message"].lower() for word in words), error["message"]


@pytest.fixture
def quick() -> Iterator[SimServer]:
    """A server whose read and keep-alive timeouts are short enough to wait out in a test."""
    with SimServer(SimProvider({}), body_timeout=0.3, keep_alive=0.3) as running:
        yield running


def test_200_simultaneous_connections_are_all_answered(server: SimServer) -> None:
    async def one() -> int:
        async with asyncio.timeout(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(chat_request(extra=b"Connection: close\r\n"))
            head = await reader.readline()
            await reader.read()
            writer.close()
            return int(head.split()[1])

    async def burst() -> list[int | BaseException]:
        return await asyncio.gather(*(one() for _ in range(200)), return_exceptions=True)

    results = asyncio.run(burst())
    assert results == [200] * 200, f"{sum(r == 200 for r in results)}/200 answered"


def test_keep_alive_requests_are_not_held_back_by_delayed_acks(server: SimServer) -> None:
    """A separate write for the headers and one for the body, with Nagle's algorithm on, make
    every keep-alive response wait for the client's delayed ACK (40 ms on Linux)."""
    with connect(server) as sock, sock.makefile("rb") as stream:
        took = []
        for _ in range(12):
            started = time.perf_counter()
            sock.sendall(chat_request())
            assert read_response(stream)[0] == 200
            took.append(time.perf_counter() - started)
    assert statistics.median(took[2:]) < 0.02, [round(t * 1000, 1) for t in took]


@pytest.mark.parametrize("length", ["abc", "1.5", "99999999999999999999999", "-1", "+5", "5, 5", "", "٥"])
def test_a_malformed_content_length_gets_a_prompt_400(server: SimServer, length: str) -> None:
    started = time.monotonic()
    status, headers, body = exchange(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\n" + AUTH
                                     + b"Content-Length: " + length.encode() + b"\r\n\r\n" + CHAT)
    assert_json_error(status, body, 400, "Content-Length")
    assert headers["connection"] == "close" and time.monotonic() - started < 2


def test_a_body_over_the_limit_gets_a_413_before_it_is_sent(server: SimServer) -> None:
    status, headers, body = exchange(server, chat_request(b"")[:-len(b"Content-Length: 0\r\n\r\n")]
                                     + b"Content-Length: %d\r\n\r\n" % (64 * 2**20))
    assert_json_error(status, body, 413, "Content-Length", "bytes")


def test_a_body_shorter_than_its_content_length_gets_a_408(quick: SimServer) -> None:
    started = time.monotonic()
    status, headers, body = exchange(quick, chat_request()[:-5])
    assert_json_error(status, body, 408, "body", f"{len(CHAT) - 5} of {len(CHAT)}")
    assert 0.25 < time.monotonic() - started < 2


def test_idle_keep_alive_connections_are_closed(quick: SimServer) -> None:
    with connect(quick) as idle, connect(quick) as used:
        used.sendall(chat_request())
        assert read_response(used.makefile("rb"))[0] == 200
        started = time.monotonic()
        assert closed_without_a_byte(idle) and closed_without_a_byte(used)
        assert time.monotonic() - started < 1.5


def test_a_chunked_body_is_decoded_and_the_next_request_answered(server: SimServer) -> None:
    half = len(CHAT) // 2
    chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n"
               + b"%x;ext=1\r\n%s\r\n%X\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (half, CHAT[:half], len(CHAT) - half, CHAT[half:]))
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(chunked + chat_request())  # pipelined: the second must not be read as leftovers
        first, second = read_response(stream), read_response(stream)
    assert first[0] == second[0] == 200
    assert json.loads(first[2])["choices"][0]["message"]["content"] == json.loads(second[2])["choices"][0]["message"]["content"]


@pytest.mark.parametrize("chunks", [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n", b"-2\r\n{}\r\n0\r\n\r\n",
                                    b"0x2\r\n{}\r\n0\r\n\r\n"], ids=["not-hex", "no-crlf", "negative", "0x"])
def test_malformed_chunking_gets_a_400(server: SimServer, chunks: bytes) -> None:
    status, _, body = exchange(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\n" + AUTH
                               + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert_json_error(status, body, 400, "chunk")


def test_expect_100_continue_http_1_0_and_a_multi_megabyte_body(server: SimServer) -> None:
    """What curl sends for a large body, an old client's request, and a body read in many pieces."""
    with connect(server) as sock, sock.makefile("rb") as stream:
        request = chat_request(extra=b"Expect: 100-continue\r\n")
        head, body = request.split(b"\r\n\r\n", 1)
        sock.sendall(head + b"\r\n\r\n")
        assert read_response(stream)[0] == 100  # before the body is sent
        sock.sendall(body)
        assert read_response(stream)[0] == 200
    status, headers, _ = exchange(server, b"GET /v1/models HTTP/1.0\r\n\r\n")
    assert status == 200 and headers["connection"] == "close"
    huge = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "refund policy " * 300_000}]}).encode()
    status, _, body = exchange(server, chat_request(huge), timeout=10)
    assert status == 400 and json.loads(body)["error"]["code"] == "context_length_exceeded"  # the whole body arrived


@pytest.mark.parametrize("method", ["PATCH", "OPTIONS", "TRACE", "DELETE", "PUT", "PROPFIND"])
def test_every_method_gets_the_providers_json_404(server: SimServer, method: str) -> None:
    status, headers, body = exchange(server, method.encode() + b" /v1/chat/completions HTTP/1.1\r\nHost: sim\r\n\r\n")
    assert_json_error(status, body, 404, f"Invalid URL ({method} /v1/chat/completions)")
    assert headers["x-request-id"].startswith("req_sim_") and headers["content-type"] == "application/json"


def test_head_gets_the_headers_of_get_without_a_body(server: SimServer) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(b"HEAD /v1/models HTTP/1.1\r\nHost: sim\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: sim\r\n\r\n")
        head_status, head_headers, head_body = read_response(stream, "HEAD")
        get_status, get_headers, get_body = read_response(stream)  # misparsed if HEAD had sent a body
    assert head_status == get_status == 200 and head_body == b""
    assert int(head_headers["content-length"]) == len(get_body) > 0 and json.loads(get_body)["object"] == "list"


@pytest.mark.parametrize(("raw", "expected", "words"), [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, ["request line"]),
    (b"GET /v1/models\r\n\r\n", 400, ["request line"]),
    (b"GET /v1/models HTTP/2.0\r\nHost: sim\r\n\r\n", 505, ["HTTP/2.0"]),
    (b"GET /v1/models HTTP/1.1\r\nHost sim\r\n\r\n", 400, ["header"]),
    (b"GET /v1/models HTTP/1.1\r\nHost: sim\r\n folded\r\n\r\n", 400, ["header"]),
    (b"GET /v1/models HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431, ["header"]),
    (b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, ["Transfer-Encoding"]),
    (b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}", 400, ["Content-Length", "Transfer-Encoding"]),
], ids=["tls-hello", "no-version", "http2", "no-colon", "obs-fold", "huge-header", "gzip-te", "te-and-cl"])
def test_malformed_requests_get_a_json_error_and_no_traceback(server: SimServer, capfd: pytest.CaptureFixture[str],
                                                               raw: bytes, expected: int, words: list[str]) -> None:
    status, headers, body = exchange(server, raw)
    assert_json_error(status, body, expected, *words)
    assert headers["connection"] == "close"
    time.sleep(0.05)  # let the server finish with the connection before reading its stderr
    assert capfd.readouterr().err == ""


def test_clients_that_vanish_leave_no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    with serve(SimProvider({"faults": [{"kind": "latency", "seconds": 0.1}]})) as server:
        for raw in (chat_request()[:-3], chat_request(), b"GET /v1/mod", chat_request(json.dumps({"model": "gpt-4o", "messages": HELLO, "stream": True}).encode())):
            with connect(server) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close with a reset
                sock.sendall(raw)
        time.sleep(0.3)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("server", [[{"kind": "drop"}]], indirect=True)
def test_a_drop_closes_the_connection_without_a_byte(server: SimServer) -> None:
    with connect(server) as sock:
        sock.sendall(chat_request())
        assert closed_without_a_byte(sock)


def test_close_abandons_hanging_requests_at_once(capfd: pytest.CaptureFixture[str]) -> None:
    server = serve(SimProvider({"faults": [{"kind": "hang", "seconds": 30}]})).start()
    sockets = [connect(server, timeout=5) for _ in range(3)]
    for sock in sockets:
        sock.sendall(chat_request())
    time.sleep(0.2)
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 1
    assert all(closed_without_a_byte(sock) for sock in sockets)
    for sock in sockets:
        sock.close()
    assert capfd.readouterr().err == ""


def test_close_works_before_start_and_twice() -> None:
    server = SimServer(SimProvider({}))
    server.close()
    server.close()
    with serve(SimProvider({})) as running:
        pass
    running.close()


def test_serve_forever_in_a_thread_stops_on_close() -> None:
    server = SimServer(SimProvider({}))
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    assert exchange(server, b"GET /v1/models HTTP/1.1\r\nHost: sim\r\n\r\n")[0] == 200
    server.close()
    thread.join(timeout=2)
    assert not thread.is_alive()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_cli_serves_the_provider_and_its_faults_to_any_client(tmp_path: Path) -> None:
    """`course-lib sim serve` as a real process: one fault per model, each reaching the SDK as
    its own exception class (hangs are covered above; a model is needed for the success)."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"faults": [
        {"kind": "outage", "status": 503, "models": ["gpt-4o"]},
        {"kind": "rate_limit", "retry_after": 2, "models": ["gpt-4.1"]},
        {"kind": "quota", "models": ["gpt-4.1-mini"]},
        {"kind": "drop", "models": ["gpt-3.5-turbo"]},
    ]}))
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "course_lib.cli", "sim", "serve", "--port", str(port), "--plan", str(plan)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1" in banner
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices[0].message.content
        expected = {"gpt-4o": openai.InternalServerError, "gpt-4.1": openai.RateLimitError,
                    "gpt-4.1-mini": openai.RateLimitError, "gpt-3.5-turbo": openai.APIConnectionError}
        for model, error in expected.items():
            with pytest.raises(error) as raised:
                client.chat.completions.create(model=model, messages=HELLO)
            assert type(raised.value) is error
            assert (getattr(raised.value, "code", None) == "insufficient_quota") == (model == "gpt-4.1-mini")
        for raw in (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n", b"\x00\xff garbage\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(raw)
                assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "Traceback" not in stderr


def test_the_cli_refuses_a_malformed_plan_naming_the_entry(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"faults": [{"kind": "outage"}, {"kind": "rate_limit", "retry_after": 0}]}))
    done = subprocess.run([sys.executable, "-m", "course_lib.cli", "sim", "serve", "--port", "0", "--plan", str(plan)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "faults[1] (rate_limit): retry_after" in done.stderr


def test_the_cli_reports_a_busy_port_in_one_line(server: SimServer) -> None:
    done = subprocess.run([sys.executable, "-m", "course_lib.cli", "sim", "serve", "--port", str(server.port)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"course-lib: cannot listen on 127.0.0.1:{server.port}")
    assert "Traceback" not in done.stderr
