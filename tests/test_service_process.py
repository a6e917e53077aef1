"""A real `course-lib serve` process: graceful shutdown (SIGTERM turns /readyz to 503 at once,
requests keep being served through the shutdown delay, in-flight ones finish, then it exits), and
its JSON log file read back by the lnav log viewer."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from test_service import ALICE, ORDER, free_port, serve_env

from course_lib.logs import install_lnav_format
from course_lib.sim.provider import SimProvider
from course_lib.sim.server import serve

SLOW = {"faults": [{"kind": "latency", "seconds": 0.6}]}  # each provider call; a chat makes two


def wait_until_up(base: str, process: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.05)
    raise AssertionError("the service did not start")


def chat(base: str, results: list[tuple[float, int]]) -> None:
    response = httpx2.post(f"{base}/v1/chat", json=ORDER, headers={"Authorization": f"Bearer {ALICE}"}, timeout=30)
    results.append((time.monotonic(), response.status_code))


def test_sigterm_drains_readiness_first_then_finishes_in_flight_requests_and_exits() -> None:
    port, delay = free_port(), 1.5
    base = f"http://127.0.0.1:{port}"
    with serve(SimProvider(SLOW)) as provider:
        env = serve_env(COURSE_LIB_SHUTDOWN_DELAY=str(delay), COURSE_LIB_DRAIN_TIMEOUT="10")
        process = subprocess.Popen([sys.executable, "-m", "course_lib.cli", "serve", "--port", str(port),
                                    "--provider", provider.url], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            wait_until_up(base, process)
            assert httpx2.get(f"{base}/readyz", timeout=5).status_code == 200
            results: list[tuple[float, int]] = []
            in_flight = threading.Thread(target=chat, args=(base, results))
            in_flight.start()
            time.sleep(0.3)  # the chat is now waiting on its first provider call
            sent = time.monotonic()
            os.kill(process.pid, signal.SIGTERM)
            time.sleep(0.1)
            ready = httpx2.get(f"{base}/readyz", timeout=5)
            alive = httpx2.get(f"{base}/healthz", timeout=5)
            during_delay: list[tuple[float, int]] = []
            chat(base, during_delay)  # a new request inside the delay is still served
            in_flight.join(timeout=30)
            _, stderr = process.communicate(timeout=30)
            exited = time.monotonic()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready" and "shutting down" in ready.json()["reason"]
    assert alive.status_code == 200  # liveness is not readiness: the process still runs
    assert [status for _, status in results] == [200] and [status for _, status in during_delay] == [200]
    assert delay <= exited - sent < delay + 10, "exits after the delay, within the drain timeout"
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr
    try:
        httpx2.get(f"{base}/healthz", timeout=1)
        raise AssertionError("the port still answers after exit")
    except httpx2.TransportError:
        pass


LNAV = shutil.which("lnav")


@pytest.mark.skipif(LNAV is None and not os.environ.get("CI"), reason="lnav is not installed (CI installs it)")
def test_the_service_log_file_is_read_by_lnav_one_request_at_a_time(tmp_path: Path) -> None:
    assert LNAV is not None, "CI must install lnav (apt-get install lnav)"
    port, log_file = free_port(), tmp_path / "service.log"
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "course_lib.cli", "serve", "--port", str(port)],
                               env=serve_env(COURSE_LIB_LOG_FILE=str(log_file)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(base, process)
        statuses = {}
        for request_id, key in (("trace-ok-1", ALICE), ("trace-ok-2", ALICE), ("trace-denied", "not-a-key-123")):
            statuses[request_id] = httpx2.post(f"{base}/v1/chat", json=ORDER, timeout=30, headers={
                "Authorization": f"Bearer {key}", "X-Request-ID": request_id}).status_code
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert statuses == {"trace-ok-1": 200, "trace-ok-2": 200, "trace-denied": 401}, stderr
    home = tmp_path / "home"
    install_lnav_format(home / ".lnav" / "formats" / "installed")
    query = (";SELECT request_id, MAX(status) AS status, COUNT(*) AS lines, SUM(logger = 'httpx2') AS provider_calls,"
             " SUM(provider_request_id IS NOT NULL) AS with_provider_id FROM course_lib_log"
             " WHERE request_id LIKE 'trace-%' GROUP BY request_id ORDER BY request_id")
    done = subprocess.run([LNAV, "-n", "-c", query, "-c", ":write-csv-to -", str(log_file)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "HOME": str(home)}, check=False)
    assert done.returncode == 0 and "error" not in done.stderr.lower(), done.stderr
    rows = {row["request_id"]: row for row in csv.DictReader(io.StringIO(done.stdout))}
    assert sorted(rows) == ["trace-denied", "trace-ok-1", "trace-ok-2"]
    assert [rows[r]["status"] for r in sorted(rows)] == ["401", "200", "200"]
    for answered in ("trace-ok-1", "trace-ok-2"):
        assert (rows[answered]["provider_calls"], rows[answered]["with_provider_id"]) == ("2", "2")
        assert int(rows[answered]["lines"]) == 5  # 2 provider calls, 2 model_call lines, request_finished
    assert rows["trace-denied"]["lines"] == "1"  # refused before any work: only its request_finished line
    text = log_file.read_text()
    assert "Where is my order" not in text and ALICE not in text
