"""Shared fixtures: a Redis client on both fakeredis and a real redis-server.

Every test that takes `redis_client` runs twice: once on fakeredis (always available) and once
on a real redis-server that this file starts on a free loopback port with persistence off.
Without the binary the real variant is skipped, except when COURSE_LIB_REQUIRE_REDIS=1 (as in
CI), where it fails instead, so a missing server can never pass quietly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio

REQUIRE_REAL_REDIS = os.environ.get("COURSE_LIB_REQUIRE_REDIS") == "1"
# Buggy submissions and the grader's fixture notebooks are graded by their tests, not run by nbmake.
collect_ignore_glob = ["mutants/*", "grader_cases/*"]
EXECUTED = Path(__file__).resolve().parents[1] / "build" / "executed"
SESSION_STARTED = time.time()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_redis_server() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real redis-server on a free loopback port, persistence off: (process, url). Skips the
    test without the binary, or fails it under COURSE_LIB_REQUIRE_REDIS=1 (as in CI)."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install -y redis-server)"
        if REQUIRE_REAL_REDIS:
            pytest.fail(message + "; COURSE_LIB_REQUIRE_REDIS=1 makes it mandatory")
        pytest.skip(message)
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None:
                    pytest.fail(f"redis-server exited with code {process.returncode}")
                time.sleep(0.02)
        else:
            pytest.fail("redis-server did not answer PING within 4 s")
        yield process, url
    finally:
        client.close()
        process.send_signal(signal.SIGCONT)  # a test may have frozen it; a stopped process holds SIGTERM
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """A real redis-server for the whole session, or a skip (a failure under CI)."""
    with running_redis_server() as (_, url):
        yield url


@pytest.fixture(params=["fakeredis", "redis-server"])
def redis_client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """An empty Redis database, on fakeredis and on a real server."""
    if request.param == "fakeredis":
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_server_url"))
        client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def executed_notebook() -> Callable[[Path], dict[str, Any]]:
    """The executed form of a notebook: the copy nbmake wrote in this session (`make test` runs
    `pytest --nbmake --overwrite build/executed` first), or else one executed here."""

    def get(path: Path) -> dict[str, Any]:
        copy = EXECUTED / path.name
        if copy.exists() and copy.stat().st_mtime >= SESSION_STARTED:
            return json.loads(copy.read_text())
        import nbformat
        from nbclient import NotebookClient

        notebook = nbformat.read(path, as_version=4)
        NotebookClient(notebook, timeout=120, resources={"metadata": {"path": str(path.parent)}}).execute()
        return notebook  # type: ignore[no-any-return]

    return get


@pytest.fixture(params=["fakeredis", "redis-server"])
def async_redis_factory(request: pytest.FixtureRequest):
    """Makes a redis.asyncio client inside the running event loop (clients belong to one loop)."""
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()
        return lambda: fakeredis.FakeAsyncRedis(server=server)
    url = request.getfixturevalue("redis_server_url")
    return lambda: redis.asyncio.Redis.from_url(url)
