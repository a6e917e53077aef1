"""What the agent service's guards cost, and how many requests/s it serves, on this machine.

Three real servers, each its own process: the simulated provider (`course-lib sim serve`), the
agent service (`course-lib serve --provider ...`, on a real redis-server when one is installed,
else the embedded fakeredis), and a bare FastAPI app under uvicorn that runs the same tool loop
against the same simulator with no guard at all (no auth, validation, screening, limits,
budgets, breaker, retry, fallback or output guard). Every request asks "Where is my order 1001?",
so each one makes two provider calls (the tool call, then the answer) on both servers.

(a) latency: one keep-alive connection to each server, requests alternating between the two, for
    `--seconds` each: p50 and p99 of both, and the difference (what the guard stack adds).
(b) throughput: `--clients` keep-alive connections (one request in flight each, a user each) for
    `--seconds`, through the service and then through the bare route; the issue's target is
    2,000 requests/s for the simulator measured through the service.
(c) why that target is out of reach here: the CPU one `AsyncOpenAI.chat.completions.create` with
    the agent's tools costs the calling process (the SDK's request transform and response
    parsing) and the simulator's CPU per call, measured on one connection; with two calls per
    request, the machine's cores put a ceiling on requests/s whatever the service does.

    python bench/bench_service.py                 # quick (~10 s with start-up)
    python bench/bench_service.py --seconds 5     # full size

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# at module level: the bare route's string annotations (postponed evaluation) resolve here
from fastapi import FastAPI, Request

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from local_redis import free_port, redis_server  # noqa: E402 - tools/local_redis.py, beside the soaks

TARGET_RPS = 2000
BODY = json.dumps({"messages": [{"role": "user", "content": "Where is my order 1001?"}]}).encode()


def user_key(number: int) -> str:
    return f"bench-key-{number:04d}"


# --- the bare route: the same tool loop, nothing around it -------------------------------------------
def bare_app(provider_url: str) -> FastAPI:
    """A FastAPI app whose POST /v1/chat runs the agent's tool loop straight on AsyncOpenAI."""
    import openai

    from course_lib.service.agent import SYSTEM_PROMPT
    from course_lib.service.tools import TOOLS, run_tool

    client = openai.AsyncOpenAI(base_url=provider_url, api_key="sim-key", max_retries=0)
    app = FastAPI()

    @app.post("/v1/chat")
    async def chat(request: Request) -> dict[str, Any]:
        messages = json.loads(await request.body())["messages"]
        history: list[Any] = [{"role": "system", "content": SYSTEM_PROMPT}, *messages]
        for last in (False, False, False, True):
            options: dict[str, Any] = {"messages": history, "tools": TOOLS, "tool_choice": "none" if last else "auto"}
            completion = await client.chat.completions.create(model="gpt-4o", max_tokens=512, **options)
            message = completion.choices[0].message
            if not message.tool_calls or last:
                return {"answer": message.content}
            history.append(message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"}))
            history += [{"role": "tool", "tool_call_id": call.id,
                         "content": run_tool(call.function.name, call.function.arguments)}  # type: ignore[union-attr]
                        for call in message.tool_calls]
        raise AssertionError("unreachable")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run_bare(port: int, provider_url: str) -> None:
    import uvicorn

    uvicorn.run(bare_app(provider_url), host="127.0.0.1", port=port, log_level="warning")


# --- starting and stopping the servers ---------------------------------------------------------------
def wait_until_up(port: int, path: str, process: subprocess.Popen[Any], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a server exited at start with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if sock.recv(12).endswith(b"200"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"no answer on port {port} within {seconds:g} s")


def start_sim() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-m", "course_lib.cli", "sim", "serve", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    found = re.search(r"(http://127\.0\.0\.1:\d+/v1)", process.stdout.readline())
    if not found:
        process.kill()
        raise SystemExit("the simulator did not start")
    return process, found.group(1)


def start_service(port: int, provider_url: str, redis_url: str | None, workers: int,
                  clients: int) -> subprocess.Popen[Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURSE_LIB_")}
    env.update({"COURSE_LIB_API_KEYS": ",".join(f"user{i}={user_key(i)}" for i in range(clients)),
                "COURSE_LIB_USER_REQUESTS_PER_MINUTE": "1000000", "COURSE_LIB_GLOBAL_REQUESTS_PER_MINUTE": "1000000",
                "COURSE_LIB_USER_TOKENS_PER_MINUTE": "10000000", "COURSE_LIB_GLOBAL_TOKENS_PER_MINUTE": "10000000",
                "COURSE_LIB_USER_DAILY_BUDGET_USD": "1000000", "COURSE_LIB_GLOBAL_DAILY_BUDGET_USD": "1000000",
                "COURSE_LIB_SHUTDOWN_DELAY": "0"})
    command = [sys.executable, "-m", "course_lib.cli", "serve", "--port", str(port), "--workers", str(workers),
               "--provider", provider_url]
    if redis_url:
        command += ["--redis", redis_url]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)


def stop(process: subprocess.Popen[Any] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the load ------------------------------------------------------------------------------------------
def request_bytes(port: int, key: str) -> bytes:
    head = (f"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n")
    return head.encode() + BODY


class Connection:
    """One keep-alive HTTP/1.1 connection; `ask` sends one request and reads the whole answer."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.request = port, request_bytes(port, key)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def ask(self) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        found = re.search(rb"\r\ncontent-length: *(\d+)", head)
        await self.reader.readexactly(int(found.group(1))) if found else await self.reader.read()
        if not found or b"\r\nconnection: close" in head:
            self.close()
        return int(head[9:12])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"p50_ms": statistics.median(ordered) * 1000, "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000,
            "requests": len(ordered)}


async def latency(service_port: int, bare_port: int, seconds: float) -> dict[str, dict[str, float]]:
    """(a): alternate one request to each over its own keep-alive connection."""
    pair = {"service": Connection(service_port, user_key(0)), "bare": Connection(bare_port, user_key(0))}
    times: dict[str, list[float]] = {"service": [], "bare": []}
    errors = 0
    for _ in range(10):  # warm up both
        for connection in pair.values():
            await connection.ask()
    deadline = time.perf_counter() + 2 * seconds
    while time.perf_counter() < deadline:
        for name, connection in pair.items():
            started = time.perf_counter()
            errors += await connection.ask() != 200
            times[name].append(time.perf_counter() - started)
    for connection in pair.values():
        connection.close()
    if errors:
        raise SystemExit(f"{errors} latency requests were not answered with 200")
    return {name: percentiles(values) for name, values in times.items()}


async def throughput(port: int, clients: int, seconds: float) -> dict[str, float]:
    """(b): `clients` keep-alive connections, one request in flight each, one user each."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def client(number: int, until: Callable[[], float], record: bool) -> None:
        connection = Connection(port, user_key(number))
        try:
            while (started := time.perf_counter()) < until():
                status = await connection.ask()
                if record:
                    latencies.append(time.perf_counter() - started)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            connection.close()

    warm = time.perf_counter() + min(0.5, seconds / 2)
    await asyncio.gather(*(client(i, lambda: warm, False) for i in range(clients)))
    started = time.perf_counter()
    end = started + seconds
    await asyncio.gather(*(client(i, lambda: end, True) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {"rps": len(latencies) / elapsed, **percentiles(latencies),
            "non_200": sum(n for s, n in statuses.items() if s != 200)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sdk_call_cost(provider_url: str, sim_pid: int, calls: int = 300) -> dict[str, float]:
    """(c): CPU milliseconds per SDK call, in this process and in the simulator."""
    import openai

    from course_lib.service.agent import SYSTEM_PROMPT
    from course_lib.service.tools import TOOLS

    client = openai.AsyncOpenAI(base_url=provider_url, api_key="sim-key", max_retries=0)
    history = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Where is my order 1001?"}]

    async def call() -> None:
        await client.chat.completions.create(model="gpt-4o", max_tokens=512, messages=history,  # type: ignore[arg-type]
                                             tools=TOOLS)  # type: ignore[arg-type]
    for _ in range(20):
        await call()
    own, sim = time.process_time(), cpu_seconds(sim_pid)
    for _ in range(calls):
        await call()
    own_ms, sim_ms = (time.process_time() - own) / calls * 1000, (cpu_seconds(sim_pid) - sim) / calls * 1000
    await client.close()
    cores = os.cpu_count() or 1
    return {"client_cpu_ms_per_call": own_ms, "simulator_cpu_ms_per_call": sim_ms,
            "ceiling_rps": cores * 1000 / (2 * (own_ms + sim_ms))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each measured run (full size: 5)")
    parser.add_argument("--clients", type=int, default=16, help="keep-alive connections for (b)")
    parser.add_argument("--workers", type=int, default=1, help="service workers (more than 1 needs redis-server)")
    parser.add_argument("--bare", type=int, metavar="PORT", help=argparse.SUPPRESS)  # internal: serve the bare app
    parser.add_argument("--provider", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        run_bare(args.bare, args.provider)
        return
    if args.seconds <= 0 or args.clients < 1 or args.workers < 1:
        raise SystemExit("--seconds must be > 0, --clients and --workers at least 1")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    sim = service = bare = None
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(None)) if shutil.which("redis-server") else None
        if args.workers > 1 and redis_url is None:
            raise SystemExit("--workers above 1 needs redis-server installed")
        try:
            sim, provider_url = start_sim()
            service_port, bare_port = free_port(), free_port()
            service = start_service(service_port, provider_url, redis_url, args.workers, args.clients)
            bare = subprocess.Popen([sys.executable, __file__, "--bare", str(bare_port), "--provider", provider_url])
            wait_until_up(service_port, "/healthz", service)
            wait_until_up(bare_port, "/healthz", bare)
            added = asyncio.run(latency(service_port, bare_port, args.seconds))
            through_service = asyncio.run(throughput(service_port, args.clients, args.seconds))
            through_bare = asyncio.run(throughput(bare_port, args.clients, args.seconds))
            cost = asyncio.run(sdk_call_cost(provider_url, sim.pid))
        finally:
            for process in (service, bare, sim):
                stop(process)

    store = "redis-server" if redis_url else "embedded fakeredis"
    print(f"(a) one client, alternating: service p50 {added['service']['p50_ms']:.2f} ms / p99 "
          f"{added['service']['p99_ms']:.2f} ms; bare route p50 {added['bare']['p50_ms']:.2f} ms / p99 "
          f"{added['bare']['p99_ms']:.2f} ms; the guards add {added['service']['p50_ms'] - added['bare']['p50_ms']:.2f}"
          f" ms at p50 ({store}, 2 provider calls per request)")
    print(f"(b) {args.clients} keep-alive clients: {through_service['rps']:.0f} requests/s through the service "
          f"({args.workers} worker(s); {2 * through_service['rps']:.0f} provider calls/s), {through_bare['rps']:.0f} "
          f"through the bare route; target {TARGET_RPS}; load average {load:.2f} on {os.cpu_count()} cores")
    print(f"(c) one SDK call with the agent's tools costs {cost['client_cpu_ms_per_call']:.2f} ms of CPU in the "
          f"caller and {cost['simulator_cpu_ms_per_call']:.2f} ms in the simulator: at 2 calls per request, "
          f"{os.cpu_count()} cores serve at most {cost['ceiling_rps']:.0f} requests/s before any guard runs")
    rounded: Callable[[dict[str, float]], dict[str, float]] = lambda d: {k: round(v, 3) for k, v in d.items()}
    print(json.dumps({
        "bench": "service", "seconds_per_run": args.seconds, "clients": args.clients, "workers": args.workers,
        "store": store, "cpus": os.cpu_count(), "load_average_1min": round(load, 2),
        "provider_calls_per_request": 2,
        "latency_one_client": {"service": rounded(added["service"]), "bare": rounded(added["bare"]),
                               "added_p50_ms": round(added["service"]["p50_ms"] - added["bare"]["p50_ms"], 3),
                               "added_p99_ms": round(added["service"]["p99_ms"] - added["bare"]["p99_ms"], 3)},
        "throughput": {"service": rounded(through_service), "bare": rounded(through_bare)},
        "sdk_call_cost": rounded(cost),
        "target_rps": TARGET_RPS, "service_meets_target": through_service["rps"] >= TARGET_RPS,
    }))


if __name__ == "__main__":
    main()
