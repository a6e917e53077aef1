"""One grading job: a notebook run in its own process session, in a temporary copy of the
student's folder, under the limits `course_lib.grading.grader` describes. Everything here runs in
a child of the grader's fork server; the grader reads back only `status.json` and the results
file the notebook's `check()` wrote."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

from .core import EXTRA_CHECKS_VARIABLE, RESULTS_VARIABLE

STARTUP_SECONDS = 30.0
"""On top of the cells' timeout: copying the submission and starting the kernel."""
MAX_FILE_BYTES = 256 * 2**20
MAX_NOTEBOOK_BYTES = 50_000_000
STOP_FACTOR = 20
"""A kernel whose output reaches this many times the limit is killed (the verdict is known), and
what it had already sent is neither read nor counted."""
IGNORED = ("__pycache__", ".ipynb_checkpoints", ".pytest_cache")
_PRELOAD_VARIABLE = "COURSE_LIB_GRADER_PRELOAD"
_CREDENTIAL_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|^OPENAI_|^COURSE_LIB_REAL_LLM$", re.IGNORECASE)


@dataclass(frozen=True)
class _Job:
    """Everything a job's process needs, plain values only (it is pickled to the fork server)."""

    index: int
    student: str
    student_dir: str
    exercise_id: str
    notebook: str
    exercises_dir: str
    job_dir: str
    timeout: float
    extra_checks: str | None
    max_output_bytes: int
    max_memory_bytes: int
    fresh_kernel: bool

    @property
    def status_file(self) -> Path:
        return Path(self.job_dir) / "status.json"

    @property
    def results_file(self) -> Path:
        return Path(self.job_dir) / "results.jsonl"



def _exit_description(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _kill_group(pgid: int | None) -> None:
    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def _kill_session(session: int, spare: int | None = None) -> None:
    """SIGKILL every process in `session` (but `spare`): on Linux, found in /proc; elsewhere the
    session leader's process group only."""
    if not sys.platform.startswith("linux"):
        _kill_group(session)
        return
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == spare:
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rpartition(")")[2].split()
            if int(fields[3]) == session:  # after the name: state, ppid, pgrp, session
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


def _run_one(job: _Job) -> None:
    """One notebook: copy, execute, write status.json. Never raises; kills what it started."""
    job_dir = Path(job.job_dir)
    started = time.perf_counter()
    status: dict[str, Any]
    try:
        os.setsid()  # the grader kills this session whole if the job outlives its time
        log = os.open(job_dir / "runner.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)  # nbclient's own warnings; the kernel writes elsewhere (counted)
        os.dup2(log, 2)
        _limit_resources(job.max_memory_bytes)
        status = _execute_job(job)
    except BaseException as error:  # noqa: BLE001 - the grader must get a status whatever happened
        traceback.print_exc()
        status = {"state": "runner_error", "detail": f"the grader failed on it: {type(error).__name__}: {error}"}
    status["seconds"] = time.perf_counter() - started
    partial = job_dir / "status.json.partial"
    partial.write_text(json.dumps(status), encoding="utf-8")
    partial.replace(job.status_file)
    _kill_session(os.getpid(), spare=os.getpid())


def _limit_resources(max_memory_bytes: int) -> None:
    for limit, value in ((resource.RLIMIT_AS, max_memory_bytes), (resource.RLIMIT_FSIZE, MAX_FILE_BYTES),
                         (resource.RLIMIT_CORE, 0)):
        _soft, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(limit, (value, hard))


def _execute_job(job: _Job) -> dict[str, Any]:
    work = Path(job.job_dir) / "work"
    started = time.perf_counter()
    try:
        _copy_submission(Path(job.student_dir), work, Path(job.exercises_dir))
    except Exception as error:  # noqa: BLE001 - special files, permissions, a full disk...
        return {"state": "copy_failed", "detail": f"could not copy the submission: {type(error).__name__}: {error}"}
    notebook, problem = _read_notebook(work / job.notebook)
    if notebook is None:
        return {"state": "bad_notebook", "detail": problem}
    before = _files(work)
    _set_kernel_environment(job)
    os.chdir(work)
    prepared = time.perf_counter()
    status = _execute_notebook(notebook, job, work)
    status["deleted"] = sorted(before - _files(work))
    status["phases"] = {"copy": prepared - started, **status["phases"]}
    return status


def _copy_submission(student: Path, work: Path, exercises_dir: Path) -> None:
    """The student's folder, then every support file of exercises/ over it (the reference wins)."""
    shutil.copytree(student, work, symlinks=True, ignore=shutil.ignore_patterns(*IGNORED))
    for source in sorted(exercises_dir.iterdir()):
        if source.name in IGNORED or source.name.startswith(".") or source.suffix == ".ipynb":
            continue
        target = work / source.name
        if target.is_symlink() or target.is_file():
            target.unlink()  # never write through a student's symbolic link
        elif target.exists():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(*IGNORED))
        else:
            shutil.copy2(source, target)


def _read_notebook(path: Path) -> tuple[Any, str]:
    import nbformat

    if path.is_symlink():
        return None, f"{path.name} is a symbolic link, not a notebook"
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        return None, f"{path.name} is {size / 1e6:.0f} MB, over the {MAX_NOTEBOOK_BYTES / 1e6:g} MB a notebook may be"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return None, f"cannot read {path.name}: {error}"
    try:
        json.loads(text)
    except ValueError as error:
        return None, f"{path.name} is not valid JSON ({error})"
    try:
        return nbformat.reads(text, as_version=4), ""
    except Exception as error:  # noqa: BLE001 - nbformat raises several kinds
        return None, f"{path.name} is not a notebook ({type(error).__name__}: {str(error)[:200]})"


def _files(folder: Path) -> set[str]:
    found: set[str] = set()
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [name for name in dirs if name not in IGNORED]
        found.update(os.path.relpath(os.path.join(parent, name), folder) for name in names)
    return found


def _set_kernel_environment(job: _Job) -> None:
    """The kernel inherits this process's environment: credentials out, the grader's variables in."""
    for name in list(os.environ):
        if _CREDENTIAL_NAME.search(name):
            del os.environ[name]
    os.environ.pop(_PRELOAD_VARIABLE, None)
    os.environ[RESULTS_VARIABLE] = str(job.results_file)
    if job.extra_checks:
        os.environ[EXTRA_CHECKS_VARIABLE] = job.extra_checks
    else:
        os.environ.pop(EXTRA_CHECKS_VARIABLE, None)
    os.environ["IPYTHONDIR"] = str(Path(job.job_dir) / "ipython")
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"


@dataclass
class _Output:
    """What the kernel printed, counted from both the messages and its file descriptors 1 and 2.
    Nothing is kept but the count and the errors' names (for the report)."""

    limit: int
    printed: int = 0
    stopped: bool = False
    errors: list[str] = field(default_factory=list)
    on_flood: Callable[[], None] = lambda: None

    def add(self, size: int) -> None:
        if self.stopped:
            return  # the verdict is known: what is still queued is not even counted
        self.printed += size
        if self.printed > self.limit * STOP_FACTOR:
            self.stopped = True
            self.on_flood()


def _message_size(content: dict[str, Any]) -> int:
    size = len(content.get("text", "")) + len(content.get("evalue", ""))
    size += sum(len(line) for line in content.get("traceback", []) if isinstance(line, str))
    for value in (content.get("data") or {}).values():
        size += len(value) if isinstance(value, str) else len(json.dumps(value))
    return size


def _drain(fd: int, output: _Output) -> None:
    """Count what the kernel (and anything it started) writes to its file descriptors 1 and 2."""
    while chunk := os.read(fd, 1 << 16):
        output.add(len(chunk))
    os.close(fd)


class _ForkedKernel:
    """A kernel forked from the job's process before any thread or event loop exists. It waits
    until the kernel manager has written the connection file, then serves it. Quacks like the
    Popen object jupyter_client's provisioner expects."""

    stdin = stdout = stderr = None

    def __init__(self, work: Path, output_fd: int) -> None:
        go_read, go_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the kernel
            code = 0
            try:
                os.close(go_write)
                _serve_kernel(go_read, output_fd, work)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        os.close(go_read)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        self.pid, self._go = pid, go_write
        self.returncode: int | None = None

    def start(self, connection_file: str) -> None:
        os.write(self._go, connection_file.encode())
        os.close(self._go)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None and (end is None or time.monotonic() < end):
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


_KERNEL_OPTIONS = ("--IPKernelApp.capture_fd_output=False", "--HistoryManager.enabled=False")
"""Writes to fds 1 and 2 reach the counting pipe once (not also as messages); no history file."""


def _serve_kernel(go_read: int, output_fd: int, work: Path) -> None:
    os.setpgid(0, 0)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.close(output_fd)
    chunks = []
    while chunk := os.read(go_read, 4096):
        chunks.append(chunk)
    connection_file = b"".join(chunks).decode()
    if not connection_file:
        return
    sys.path[:] = [str(work)] + [p for p in sys.path if p not in ("", ".")]
    sys.argv = [sys.executable, "-f", connection_file]
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    # parent_handle: the kernel exits if the job's process dies (and prints no banner).
    app.initialize(["-f", connection_file, f"--IPKernelApp.parent_handle={os.getppid()}", *_KERNEL_OPTIONS])
    app.start()


def _execute_notebook(notebook: Any, job: _Job, work: Path) -> dict[str, Any]:
    """Run the cells with nbclient; the outcome and what was printed, as a status dict."""
    from jupyter_client.asynchronous.client import AsyncKernelClient
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_client.provisioning import LocalProvisioner
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    job_dir = Path(job.job_dir)
    read_fd, write_fd = os.pipe()
    kernel: Any = None if job.fresh_kernel else _ForkedKernel(work, write_fd)
    output = _Output(job.max_output_bytes)
    output.on_flood = lambda: _kill_group(kernel.pid if kernel is not None else None)
    if kernel is not None:
        os.close(write_fd)
    drain = threading.Thread(target=_drain, args=(read_fd, output), daemon=True)
    drain.start()

    class ForkedProvisioner(LocalProvisioner):  # type: ignore[misc]
        async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
            nonlocal kernel
            if job.fresh_kernel:
                kwargs.update(stdout=write_fd, stderr=write_fd)
                connection = await super().launch_kernel(cmd, **kwargs)
                os.close(write_fd)
                kernel = self.process
            else:
                kernel.start(self.parent.connection_file)  # type: ignore[union-attr]
                self.process, self.pid, self.pgid = kernel, kernel.pid, kernel.pid
                connection = self.connection_info
            (job_dir / "kernel.pid").write_text(str(kernel.pid))
            return connection

    class QuickClient(AsyncKernelClient):  # type: ignore[misc]
        async def wait_for_ready(self, timeout: float | None = None) -> None:
            """jupyter_client's, without the final 0.2 s wait for IOPub to fall silent: nbclient
            ignores messages that answer another request, so there is nothing to flush."""
            end = time.monotonic() + (timeout or STARTUP_SECONDS)
            while True:
                self.kernel_info()
                with contextlib.suppress(Empty):
                    reply = await self.shell_channel.get_msg(timeout=1)
                    if reply["msg_type"] == "kernel_info_reply":
                        with contextlib.suppress(Empty):  # IOPub delivers: it is connected
                            await self.iopub_channel.get_msg(timeout=0.2)
                            self._handle_kernel_info_reply(reply)
                            return
                if not await self._async_is_alive():
                    raise RuntimeError("Kernel died before replying to kernel_info")
                if time.monotonic() > end:
                    raise RuntimeError(f"Kernel didn't respond in {timeout} seconds")

    class Manager(AsyncKernelManager):  # type: ignore[misc]
        async def _async_pre_start_kernel(self, **kwargs: Any) -> Any:
            if self.provisioner is None:
                self.provisioner = ForkedProvisioner(kernel_id=self.kernel_id or "grader", parent=self,
                                                     kernel_spec=self.kernel_spec)
            return await super()._async_pre_start_kernel(**kwargs)

    class CountingClient(NotebookClient):  # type: ignore[misc]
        """Counts every output and keeps none; remembers each error's name and message."""

        def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
            kind = msg["msg_type"]
            if output.stopped:  # the kernel was killed for its output: end this task, read no more
                raise DeadKernelError("stopped for printing too much")
            if kind in ("stream", "display_data", "execute_result", "update_display_data", "error"):
                output.add(_message_size(msg["content"]))
                if kind == "error" and len(output.errors) < 20:
                    content = msg["content"]
                    output.errors.append(f"{content.get('ename', '')}: {str(content.get('evalue', ''))[:200]}")
                return None
            return super().process_message(msg, cell, cell_index)

    deadline: list[float] = []
    marks = {"start": time.perf_counter()}

    def kernel_ready(**_: Any) -> None:
        marks["ready"] = time.perf_counter()

    def time_left(_cell: Any) -> int:
        if not deadline:
            deadline.append(time.monotonic() + job.timeout)
        return max(1, math.ceil(deadline[0] - time.monotonic()))

    manager = Manager(kernel_name="python3", transport="ipc", ip=str(job_dir / "k"), cache_ports=False,
                      connection_file=str(job_dir / "kernel.json"))
    manager.client_factory = QuickClient
    if job.fresh_kernel:
        manager.kernel_spec  # noqa: B018 - the real kernelspec: a new Python process
    else:
        manager._kernel_spec = KernelSpec(argv=["forked"], display_name="Python 3 (forked)", language="python",
                                          interrupt_mode="signal")
    client = CountingClient(notebook, km=manager, timeout=math.ceil(job.timeout), timeout_func=time_left,
                            startup_timeout=int(STARTUP_SECONDS), allow_errors=True, iopub_timeout=2,
                            resources={"metadata": {"path": str(work)}}, record_timing=False,
                            on_notebook_start=kernel_ready, extra_arguments=list(_KERNEL_OPTIONS))
    state, detail = "finished", ""
    try:
        client.execute()
    except CellTimeoutError:
        state = "timeout"
    except DeadKernelError:
        state = "kernel_died"
    except Exception as error:  # noqa: BLE001 - e.g. the kernel never started
        state, detail = "runner_error", f"the notebook could not be run: {type(error).__name__}: {error}"
    finally:
        if kernel is not None:
            _kill_group(kernel.pid)
            with contextlib.suppress(Exception):  # subprocess.TimeoutExpired with a fresh kernel
                kernel.wait(5)
    marks["cells done"] = time.perf_counter()
    if state == "kernel_died" and kernel is not None:
        detail = _exit_description(kernel.returncode)
    drain.join(2)
    ready = marks.get("ready", marks["cells done"])
    phases = {"kernel start": ready - marks["start"], "cells": marks["cells done"] - ready,
              "stop": time.perf_counter() - marks["cells done"]}
    return {"state": state, "detail": detail, "printed": output.printed, "stopped": output.stopped,
            "errors": output.errors, "phases": phases}
