"""Throughput of the simulated provider over real HTTP (course_lib.sim.server).

The server runs as `course-lib sim serve` in its own process, so the Python load generator here
does not share its GIL (on a 2-core machine: one core each). Every request is a tiny
POST /v1/chat/completions for gpt-4o-mini with an Authorization header.

(a) requests/s at 16 keep-alive connections from a cheap asyncio raw-socket client (one request
    in flight per connection, the response read by its Content-Length); target >= 2000/s.
(b) what a new user gets: one keep-alive httpx.Client per thread, at 4 and at 16 threads (this
    client costs more CPU than the server, so the figure is a floor, not the server's ceiling).
(c) 200 connections opened at once, each sending one request: how many are answered within the
    timeout (httpx's default, 5 s), and how long the last one took; target 200/200.

With (a) come the server process's CPU time per request and its share of a core (from /proc, on
Linux), the load generator's own share, and the machine's load average: on a shared machine a
server that gets half a core serves half the requests, and these tell that apart from a slow one.

    python bench/bench_sim_server.py                  # quick (~3 s)
    python bench/bench_sim_server.py --seconds 5      # full size

The last line printed is one JSON object with every figure and the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from importlib.metadata import version

import httpx

TARGET_RPS, TARGET_BURST = 2000, 200
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}).encode()
HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}


def request_bytes(port: int) -> bytes:
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in HEADERS.items())
    return (head + f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


def start_server() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([sys.executable, "-m", "course_lib.cli", "sim", "serve", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    banner = process.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", banner)
    if not found:
        process.kill()
        raise SystemExit(f"the server did not start: {banner!r}")
    return process, int(found.group(1))


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of process `pid`, or None where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server will close the connection), after reading the whole body."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    found = re.search(rb"\r\ncontent-length: *(\d+)", head)
    if found:
        await reader.readexactly(int(found.group(1)))
    else:
        await reader.read()  # no length: the body runs to the end of the connection
    return int(head[9:12]), b"\r\nconnection: close" in head or not found


async def raw_keepalive(port: int, clients: int, seconds: float, server_pid: int) -> dict[str, float]:
    """(a): `clients` keep-alive connections, each one request in flight, for `seconds`."""
    request, latencies, errors = request_bytes(port), [], 0

    async def client(deadline: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (started := time.perf_counter()) < deadline:
                writer.write(request)
                status, closing = await read_response(reader)
                latencies.append(time.perf_counter() - started)
                errors += status != 200
                if closing:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    await asyncio.gather(*(client(time.perf_counter() + 0.1) for _ in range(clients)))  # warm up
    latencies.clear()
    server_cpu, own_cpu, started = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(started + seconds) for _ in range(clients)))
    elapsed, own_cpu, server_end = time.perf_counter() - started, time.process_time() - own_cpu, cpu_seconds(server_pid)
    server_cpu = server_end - server_cpu if server_end is not None and server_cpu is not None else float("nan")
    latencies.sort()
    p50, p99 = (statistics.median(latencies), latencies[int(len(latencies) * 0.99)]) if latencies else (float("nan"),) * 2
    return {"rps": len(latencies) / elapsed, "requests": len(latencies), "errors": errors, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000,
            "server_cpu_share": server_cpu / elapsed, "server_cpu_us_per_request": server_cpu / max(1, len(latencies)) * 1e6,
            "loadgen_cpu_share": own_cpu / elapsed}


def httpx_threads(port: int, threads: int, seconds: float) -> dict[str, float]:
    """(b): one keep-alive httpx.Client per thread, for `seconds`."""
    counts, errors = [0] * threads, [0] * threads
    start = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", headers=HEADERS, timeout=10) as client:
            client.post("/chat/completions", content=BODY)
            start.wait()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                errors[i] += client.post("/chat/completions", content=BODY).status_code != 200
                counts[i] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    start.wait()
    started, own_cpu = time.perf_counter(), time.process_time()
    for thread in pool:
        thread.join()
    elapsed, own_cpu = time.perf_counter() - started, time.process_time() - own_cpu
    return {"rps": sum(counts) / elapsed, "requests": sum(counts), "errors": sum(errors), "loadgen_cpu_share": own_cpu / elapsed}


async def burst(port: int, connections: int, timeout: float) -> dict[str, float]:
    """(c): `connections` connections opened at once, each sending one request."""
    request = request_bytes(port)

    async def one() -> float | None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(request)
                    status, _ = await read_response(reader)
                finally:
                    writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        return time.perf_counter() - started if status == 200 else None

    started = time.perf_counter()
    times = [t for t in await asyncio.gather(*(one() for _ in range(connections))) if t is not None]
    return {"answered": len(times), "of": connections, "seconds": time.perf_counter() - started,
            "slowest_answer_s": max(times, default=float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.4, help="length of each throughput run (full size: 5)")
    parser.add_argument("--clients", type=int, default=16, help="keep-alive connections for (a) and threads for (b)")
    parser.add_argument("--burst", type=int, default=200, help="connections opened at once for (c)")
    parser.add_argument("--burst-timeout", type=float, default=5.0, help="seconds each burst connection may take")
    args = parser.parse_args()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    process, port = start_server()
    try:
        raw = asyncio.run(raw_keepalive(port, args.clients, args.seconds, process.pid))
        few = httpx_threads(port, 4, args.seconds)
        many = httpx_threads(port, args.clients, args.seconds)
        burst_result = asyncio.run(burst(port, args.burst, args.burst_timeout))  # last: its failures must not slow the others
    finally:
        process.terminate()
        process.wait(timeout=10)

    print(f"(a) raw keep-alive, {args.clients} connections: {raw['rps']:.0f} requests/s "
          f"(p50 {raw['p50_ms']:.1f} ms, p99 {raw['p99_ms']:.1f} ms, {raw['errors']} non-200), target {TARGET_RPS}")
    print(f"    server: {raw['server_cpu_us_per_request']:.0f} us CPU per request, {raw['server_cpu_share']:.0%} of a core "
          f"(so about {1e6 / raw['server_cpu_us_per_request']:.0f} requests/s on a whole core); load generator "
          f"{raw['loadgen_cpu_share']:.0%} of a core; load average {load:.2f} on {os.cpu_count()} cores")
    print(f"(b) httpx.Client per thread: {few['rps']:.0f} requests/s at 4 threads, {many['rps']:.0f} at {args.clients} "
          f"(the client process uses {few['loadgen_cpu_share']:.0%} and {many['loadgen_cpu_share']:.0%} of a core)")
    print(f"(c) {burst_result['answered']}/{burst_result['of']} simultaneous connections answered in "
          f"{burst_result['seconds']:.2f} s (timeout {args.burst_timeout:g} s), target {TARGET_BURST}/{TARGET_BURST}")
    print(json.dumps({
        "bench": "sim_server_http",
        "seconds_per_run": args.seconds,
        "cpus": os.cpu_count(),
        "load_average_1min": round(load, 2),
        "httpx": version("httpx"),
        "raw_keepalive": {"clients": args.clients, **{k: round(v, 3) for k, v in raw.items()}},
        "httpx_threads": {"4": {k: round(v, 3) for k, v in few.items()},
                          str(args.clients): {k: round(v, 3) for k, v in many.items()}},
        "burst": {**{k: round(v, 3) for k, v in burst_result.items()}, "timeout_s": args.burst_timeout},
        "target": {"rps": TARGET_RPS, "clients": 16, "burst_answered": f"{TARGET_BURST}/{TARGET_BURST}"},
    }))


if __name__ == "__main__":
    main()
