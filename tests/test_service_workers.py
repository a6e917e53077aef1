"""`course-lib serve --workers 4` on a real redis-server, calling a simulator over HTTP whose fault
plan takes gpt-4o down: the per-user and global request limits hold exactly across the four
workers, every refusal is a 429 with the IETF headers and a stable code, answers come from the
fallback model, and when the redis-server is stopped mid-run each worker keeps answering by the
configured policies (a local limit per worker, budgets failing closed with 503), never a 500 and
never slower than the Redis timeout allows."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx2
from conftest import running_redis_server

from course_lib.service import STATUS
from course_lib.sim.provider import SimProvider
from course_lib.sim.server import serve

WORKERS = 4
USER_LIMIT, GLOBAL_LIMIT, LOCAL_FRACTION = 5, 12, 0.4
LOCAL_USER_LIMIT = 2  # floor(5 x 0.4): each worker's own limit per user while Redis is down
KEYS = {user: f"key-{user}-0001" for user in ("alice", "bob", "carol", "dave", "eve")}
ORDER = {"messages": [{"role": "user", "content": "Where is my order 1001?"}]}
GPT_4O_DOWN = {"faults": [{"kind": "outage", "status": 503, "models": ["gpt-4o"]}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def four_workers(redis_url: str, provider_url: str) -> Iterator[str]:
    """The service's base URL once all four workers have answered /healthz."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURSE_LIB_")}
    env.update({"COURSE_LIB_API_KEYS": ",".join(f"{u}={k}" for u, k in KEYS.items()),
                "COURSE_LIB_USER_REQUESTS_PER_MINUTE": str(USER_LIMIT),
                "COURSE_LIB_GLOBAL_REQUESTS_PER_MINUTE": str(GLOBAL_LIMIT),
                "COURSE_LIB_LIMITER_LOCAL_FRACTION": str(LOCAL_FRACTION),
                "COURSE_LIB_RETRY_ATTEMPTS": "1",  # the defaults: limiter "local", budgets "closed"
                "COURSE_LIB_SHUTDOWN_DELAY": "0"})
    process = subprocess.Popen([sys.executable, "-m", "course_lib.cli", "serve", "--workers", str(WORKERS),
                                "--port", str(port), "--redis", redis_url, "--provider", provider_url],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 25
        while len(pids) < WORKERS and time.monotonic() < deadline:
            try:
                pids.add(httpx2.get(f"{base}/healthz", timeout=2).json()["pid"])
            except httpx2.TransportError:
                assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
                time.sleep(0.05)
        assert len(pids) == WORKERS
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def burst(base: str, user: str, count: int) -> list[tuple[httpx2.Response, float]]:
    """`count` concurrent requests, each on a fresh connection so that the workers share them."""

    def one(_: int) -> tuple[httpx2.Response, float]:
        started = time.monotonic()
        response = httpx2.post(f"{base}/v1/chat", json=ORDER, headers={"Authorization": f"Bearer {KEYS[user]}"},
                               timeout=10)
        return response, time.monotonic() - started

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def check_refusal(response: httpx2.Response) -> str:
    """A 429 as the issue asks; the name of the limit that refused."""
    error = response.json()["error"]
    assert (response.status_code, error["code"], STATUS[error["code"]]) == (429, "rate_limited", 429)
    name, limit = error["limit_name"], error["limit"]
    assert response.headers["RateLimit-Policy"] == f'"{name}";q={limit};w=60'
    assert response.headers["RateLimit"].startswith(f'"{name}";r=0;t=')
    assert int(response.headers["Retry-After"]) == error["retry_after"] and 1 <= error["retry_after"] <= 60
    return str(name)


def test_four_workers_share_limits_and_survive_redis_stopping() -> None:
    with running_redis_server() as (redis_process, redis_url), serve(SimProvider(GPT_4O_DOWN)) as provider, \
            four_workers(redis_url, provider.url) as base:
        phase = {user: burst(base, user, count) for user, count in
                 (("alice", 10), ("bob", 10), ("carol", 10), ("dave", 3))}
        redis_process.terminate()  # Redis gone mid-run
        redis_process.wait(timeout=10)
        down = burst(base, "eve", 16)

    # --- with Redis: exact counts across the four workers ---
    admitted = {user: [r for r, _ in results if r.status_code == 200] for user, results in phase.items()}
    assert {user: len(ok) for user, ok in admitted.items()} == {"alice": 5, "bob": 5, "carol": 2, "dave": 0}
    assert sum(len(ok) for ok in admitted.values()) == GLOBAL_LIMIT
    assert len({r.headers["X-Worker-PID"] for ok in admitted.values() for r in ok}) >= 2  # shared, not per worker
    refused_by = {user: Counter(check_refusal(r) for r, _ in results if r.status_code != 200)
                  for user, results in phase.items()}
    assert refused_by["alice"] == refused_by["bob"] == Counter({"user-requests": 5})
    assert sum(refused_by["carol"].values()) == 8 and refused_by["carol"]["global-requests"] >= 3
    assert refused_by["dave"] == Counter({"global-requests": 3})
    answers = [r.json() for ok in admitted.values() for r in ok]
    assert {(a["handler"], a["degraded"]) for a in answers} == {("gpt-4o-mini", False)}  # gpt-4o is down
    assert all('"shipped"' in a["answer"] for a in answers)

    # --- Redis stopped: a local limit per worker, budgets fail closed, no 500, no hang ---
    assert max(seconds for _, seconds in down) < 3.0
    per_worker: dict[str, Counter[int]] = {}
    for response, _ in down:
        per_worker.setdefault(response.headers["X-Worker-PID"], Counter())[response.status_code] += 1
        error = response.json()["error"]
        if response.status_code == 503:
            assert (error["code"], response.headers["Retry-After"]) == ("budget_unavailable", "5")
        else:
            assert check_refusal(response) == "user-requests"
            assert (error["decided_by"], error["limit"]) == ("local", LOCAL_USER_LIMIT)
    for pid, statuses in per_worker.items():
        assert set(statuses) <= {503, 429}, (pid, statuses)
        assert statuses[503] == min(LOCAL_USER_LIMIT, statuses.total()), (pid, statuses)
