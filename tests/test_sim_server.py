"""The simulated provider over real HTTP: the openai SDK's own HTTP client, real sockets,
real time (so the windows and timeouts here are short), and the `course-lib` command."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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
    finally:
        process.terminate()
        process.wait(timeout=10)


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
