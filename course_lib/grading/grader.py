"""`course-lib grade`: score a folder of submissions, each notebook in its own process and folder.

    course-lib grade SUBMISSIONS/ --out grades.csv [--report grades.md] [--exercises exercises/]
                     [--timeout 60] [--jobs N] [--extra-checks DIR] [--max-output-mb 1]
                     [--max-memory-mb 4096] [--fresh-kernels]

SUBMISSIONS holds one folder per student (the folder's name is the student's), each laid out
like `exercises/`. The exercises graded are those whose notebook is in `--exercises`; every
notebook there must belong to an exercise (ex1-ex4, or one registered by `--extra-checks`),
else the grader stops before running anything (`GradeError`).

Each (student, notebook) is one job, `jobs` of them at a time (default: the CPU count):
- a process of its own, in a new session, started from a fork server that has imported the
  kernel, nbclient and the course's libraries once (`PRELOAD`), so a job does not pay for them;
- a temporary folder holding a copy of the student's folder (symbolic links copied as links),
  with the support files of `--exercises` (every file there except the notebooks) copied over
  it: the reference versions win. The submissions folder is only read;
- nbclient executes the notebook with allow_errors=True, so the final `check("exN")` cell runs
  even when a stub cell raised, in an IPython kernel forked from the job's process (or, with
  `fresh_kernels`, started as a new Python process: slower, nothing preloaded). The kernel's
  environment names the results file (COURSE_LIB_GRADE_RESULTS, outside the copy) and the
  `--extra-checks` folder (COURSE_LIB_EXTRA_CHECKS); variables whose names look like
  credentials (KEY, TOKEN, SECRET, PASSWORD...; OPENAI_*) are removed from it.

Limits: the cells get `timeout` seconds in all (copying and starting the kernel get
STARTUP_SECONDS more; past both, the grader kills the job's whole session); the kernel's process
group and every process left in the job's session are killed when the job ends; the output
(print, display data, tracebacks, writes to file descriptors 1 and 2) is counted, never kept,
and a kernel that prints 20 times the limit is stopped; RLIMIT_AS caps each process's memory,
RLIMIT_FSIZE each file it writes (MAX_FILE_BYTES), RLIMIT_CORE is 0.

Points come from the results file that `check()` writes, each check all or nothing. Every check
of an exercise scores 0, and the exercise carries the reason, when: the notebook is missing, is
a symbolic link, or is not a valid notebook; the cells did not finish within the timeout; the
kernel died; the output went over `max_output_mb`; files that were in the copy before the run
were deleted; or `check()` did not report every check of the exercise. A job's failure never
stops the others and never stops the grader: it becomes that job's reason.

This is isolation against accidents, not a sandbox: `ISOLATION` says what it does not protect.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._wrapping import check as check_argument
from .job import (
    _PRELOAD_VARIABLE,
    STARTUP_SECONDS,
    _exit_description,
    _Job,
    _kill_group,
    _kill_session,
    _run_one,
)

__all__ = ["ISOLATION", "CheckScore", "ExerciseInfo", "GradeError", "GradeRun", "NotebookGrade", "grade"]

KILL_GRACE_SECONDS = 10.0
"""How long the grader waits, past a job's own limits, before it kills the job's session."""
DEFAULT_MEMORY_MB = 4096
PRELOAD = ("nbformat", "nbclient", "jupyter_client.manager", "ipykernel.kernelapp", "ipykernel.ipkernel",
           "ipykernel.debugger", "IPython", "openai", "fastapi", "starlette.testclient", "pytest", "course_lib.clock",
           "course_lib.llm", "course_lib.sim", "course_lib.redaction", "course_lib.logs",
           "course_lib.grading.ex1_retry", "course_lib.grading.ex2_circuit_breaker",
           "course_lib.grading.ex3_fallback_chain", "course_lib.grading.ex4_structured_logging")
"""Imported once by the fork server; a module that fails to import is skipped there (and fails
in the jobs that import it, with its own error)."""

ISOLATION = """\
Each notebook runs in processes of its own, in a copy of the student's folder, so a submission
that hangs, crashes its kernel, prints without end or deletes the files around it costs only
that exercise's points: its other notebooks and the other students are graded as usual, and the
submissions folder is only read. The kernel talks to its job's process over Unix sockets in the
job's private temporary folder, not over a TCP port.

This is not a sandbox. A submission runs as the user who runs the grader, with that user's
rights: it can read any file that user can (other students' submissions, ~/.ssh, the grader's
own files), write or delete files outside its temporary folder, open network connections, send
signals to the grader's processes, start a process in a session of its own (setsid) that
outlives the job, and fake its results: the checks run inside the student's kernel, so code that
patches them, or writes the results file itself, is believed.

What is limited: the time (--timeout for the cells, then every process of the job's session is
killed, as they are when a job ends); the output (counted, never kept; past 20 times
--max-output-mb the kernel is killed; what the kernel prints within 0.2 s arrives as one message,
which the job's process reads whole to count it); the memory of each process (--max-memory-mb,
as RLIMIT_AS); the size of each file it writes (256 MB, RLIMIT_FSIZE); core dumps (none); and
credentials in environment variables (removed: names with KEY, TOKEN, SECRET, PASSWORD..., and
OPENAI_*). Nothing limits the number of processes, the disk space in all, or the memory and CPU
of a job's processes together. Kernels are forked from a server that has already imported the
course's libraries, so a submission starts with them loaded, as if it had imported them itself.

To grade code you do not trust, run `course-lib grade` inside a container or a virtual machine
with no network, a throwaway user and nothing else mounted."""


class GradeError(Exception):
    """The grader cannot start: a folder or a package is missing, or an exercise notebook has no checks."""


@dataclass(frozen=True)
class ExerciseInfo:
    """What the grader knows of an exercise: its checks' names and points, in order."""

    id: str
    title: str
    notebook: str
    checks: tuple[tuple[str, float], ...]

    @property
    def max_points(self) -> float:
        return sum(points for _, points in self.checks)


@dataclass(frozen=True)
class CheckScore:
    name: str
    points: float
    max_points: float
    passed: bool
    message: str = ""


@dataclass(frozen=True)
class NotebookGrade:
    """One student's result on one exercise. A non-empty `reason` means every check scored 0."""

    student: str
    exercise: ExerciseInfo
    checks: tuple[CheckScore, ...]
    reason: str = ""
    seconds: float = 0.0
    ran: bool = True
    phases: dict[str, float] = field(default_factory=dict, compare=False)
    """Where the job's time went: copy (and read the notebook), kernel start, cells, stop (kill
    what is left), process start and exit."""

    @property
    def points(self) -> float:
        return sum(check.points for check in self.checks)

    @property
    def max_points(self) -> float:
        return self.exercise.max_points


@dataclass
class GradeRun:
    """Every student's grade on every exercise, and how long grading took."""

    exercises: list[ExerciseInfo]
    students: list[str]
    grades: dict[tuple[str, str], NotebookGrade]
    wall_seconds: float = 0.0
    jobs: int = 1

    def grade_of(self, student: str, exercise_id: str) -> NotebookGrade:
        return self.grades[(student, exercise_id)]

    def total(self, student: str) -> float:
        return sum(self.grade_of(student, ex.id).points for ex in self.exercises)

    @property
    def max_total(self) -> float:
        return sum(ex.max_points for ex in self.exercises)

    @property
    def notebooks_run(self) -> int:
        return sum(1 for result in self.grades.values() if result.ran)

    def describe(self) -> str:
        """'30 students x 4 exercises: 120 notebooks run in 61.2 s wall, 0.51 s per notebook (...)'."""
        ran = self.notebooks_run
        each = sum(result.seconds for result in self.grades.values() if result.ran) / ran if ran else 0.0
        per = self.wall_seconds / ran if ran else 0.0
        return (f"{len(self.students)} students x {len(self.exercises)} exercises: {ran} notebooks run in "
                f"{self.wall_seconds:.1f} s wall, {per:.2f} s per notebook ({each:.2f} s each on average, "
                f"{self.jobs} at a time)")

    def timing(self) -> str:
        """Where a notebook's time goes, on average: 'copy 0.08 s, kernel start 0.19 s, cells 0.62 s, ...'."""
        phases: dict[str, list[float]] = {}
        for result in self.grades.values():
            for phase, seconds in result.phases.items():
                phases.setdefault(phase, []).append(seconds)
        parts = [f"{phase} {sum(values) / len(values):.2f} s" for phase, values in phases.items()]
        return "time per notebook on average: " + ", ".join(parts) if parts else ""


def _zero(exercise: ExerciseInfo) -> tuple[CheckScore, ...]:
    return tuple(CheckScore(name, 0.0, points, False) for name, points in exercise.checks)


# --- find the exercises and the students, schedule the jobs (course_lib.grading.job), read their results


def grade(submissions: Path | str, *, exercises_dir: Path | str = "exercises", timeout: float = 60,
          jobs: int | None = None, extra_checks: Path | str | None = None, max_output_mb: float = 1,
          max_memory_mb: float = DEFAULT_MEMORY_MB, fresh_kernels: bool | None = None,
          on_result: Callable[[NotebookGrade], None] | None = None) -> GradeRun:
    """Grade every student folder in `submissions` on every exercise whose notebook is in
    `exercises_dir`; `on_result` hears of each notebook's grade as it comes. Raises ValueError for
    a bad limit and GradeError for a missing folder, package or exercise, before any notebook
    runs; after that, whatever the submissions do, it returns every grade.

    The jobs start from a multiprocessing fork server, so, as with anything multiprocessing
    starts, the calling script must be importable (its code under `if __name__ == "__main__":`)."""
    check_argument(timeout > 0, "timeout", "> 0 seconds", timeout)
    check_argument(max_output_mb > 0, "max_output_mb", "> 0", max_output_mb)
    check_argument(max_memory_mb >= 256, "max_memory_mb", ">= 256", max_memory_mb)
    jobs = jobs or _cpu_count()
    check_argument(jobs >= 1, "jobs", ">= 1", jobs)
    submissions, exercises_dir = Path(submissions).resolve(), Path(exercises_dir).resolve()
    extras = Path(extra_checks).resolve() if extra_checks else None
    for name, folder in (("submissions", submissions), ("exercises", exercises_dir), ("extra checks", extras)):
        if folder is not None and not folder.is_dir():
            raise GradeError(f"{name} folder {folder} does not exist")
    missing = [name for name in ("nbclient", "nbformat", "jupyter_client", "ipykernel")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise GradeError(f"grading runs notebooks: install {', '.join(missing)} (pip install nbclient ipykernel)")
    fresh = (not sys.platform.startswith("linux")) if fresh_kernels is None else fresh_kernels
    started = time.perf_counter()
    context = _fork_server()
    with tempfile.TemporaryDirectory(prefix="course-lib-grade-") as root:
        exercises = describe_exercises(exercises_dir, extras, context=context, scratch=Path(root))
        students = sorted(p.name for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
        grades: dict[tuple[str, str], NotebookGrade] = {}

        def record(result: NotebookGrade) -> None:
            grades[(result.student, result.exercise.id)] = result
            if on_result is not None:
                on_result(result)

        pending: list[_Job] = []
        for student in students:
            for ex in exercises:
                if not (submissions / student / ex.notebook).is_file():
                    record(NotebookGrade(student, ex, _zero(ex), f"no {ex.notebook} in the submission", ran=False))
                    continue
                job_dir = Path(root) / f"j{len(pending):04d}"
                pending.append(_Job(len(pending), student, str(submissions / student), ex.id, ex.notebook,
                                    str(exercises_dir), str(job_dir), float(timeout), str(extras) if extras else None,
                                    int(max_output_mb * 1_000_000), int(max_memory_mb * 2**20), fresh))
        by_id = {ex.id: ex for ex in exercises}
        _run_jobs(pending, by_id, context, jobs, record)
    run = GradeRun(exercises, students, grades, time.perf_counter() - started, jobs)
    return run


def _cpu_count() -> int:
    """The CPUs this process may run on (a container may have fewer than the machine)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _fork_server() -> Any:
    """The fork server every job starts from, running: it has imported PRELOAD once."""
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    # The fork server copies this environment when it starts: the first variable makes it run
    # _preload() when it imports this module; the second quiets debugpy's warning about frozen modules.
    server_environment = {_PRELOAD_VARIABLE: "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    previous = {name: os.environ.get(name) for name in server_environment}
    os.environ.update(server_environment)
    try:
        forkserver.ensure_running()
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return context


def _preload() -> None:
    """In the fork server: import what every job needs. A module that fails (one being edited, a
    syntax error) must not take the fork server down with it."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S110
            pass


def describe_exercises(exercises_dir: Path, extra_checks: Path | None, *, context: Any = None,
                       scratch: Path | None = None) -> list[ExerciseInfo]:
    """The exercises whose notebook is in `exercises_dir`, with their checks (extra checks
    included), read in a child process so that the grader never imports instructors' modules."""
    context = context or _fork_server()
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        answer = Path(folder) / "exercises.json"
        process = context.Process(target=_describe, args=(str(answer), str(extra_checks) if extra_checks else None))
        process.start()
        process.join(120)
        if process.is_alive():
            process.kill()
            process.join()
        if not answer.exists():
            raise GradeError(f"could not read the exercises' checks (exit code {process.exitcode})")
        described = json.loads(answer.read_text(encoding="utf-8"))
    if "error" in described:
        raise GradeError(described["error"])
    registered = {item["notebook"]: ExerciseInfo(item["id"], item["title"], item["notebook"],
                                                 tuple((name, float(points)) for name, points in item["checks"]))
                  for item in described["exercises"]}
    notebooks = sorted(p.name for p in exercises_dir.glob("*.ipynb"))
    unknown = [name for name in notebooks if name not in registered]
    if unknown:
        failures = "".join(f"; {module} failed to import: {error}" for module, error in described["failures"].items())
        raise GradeError(f"no exercise has the notebook(s) {', '.join(unknown)} in {exercises_dir}{failures}")
    if not notebooks:
        raise GradeError(f"no exercise notebooks (*.ipynb) in {exercises_dir}")
    found = [registered[name] for name in notebooks]
    return sorted(found, key=lambda ex: _natural(ex.id))


def _natural(text: str) -> list[Any]:
    """ex2 before ex10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _describe(answer: str, extra_checks: str | None) -> None:
    """In a child: import the course's exercises and the extra checks, write what they define.
    A course module that fails to import matters only if its notebook is graded; an extra checks
    module that fails stops the grader (an instructor's check must not vanish silently)."""
    from . import core

    failures = {}
    for module in core._MODULES.values():
        try:
            importlib.import_module(f"{__package__}.{module}")
        except Exception as error:  # noqa: BLE001 - reported only if one of its notebooks is graded
            failures[f"{__package__}.{module}"] = f"{type(error).__name__}: {error}"
    described: dict[str, Any]
    try:
        if extra_checks:
            core.load_extra_checks(Path(extra_checks))
    except Exception as error:  # noqa: BLE001 - an instructor's module may raise anything
        described = {"error": f"could not load the extra checks in {extra_checks}: {type(error).__name__}: {error}"}
    else:
        exercises = [{"id": ex.id, "title": ex.title, "notebook": ex.notebook,
                      "checks": [(item.name, item.points) for item in ex.checks]}
                     for ex in core.EXERCISES.values()]
        described = {"exercises": exercises, "failures": failures}
    Path(answer).write_text(json.dumps(described), encoding="utf-8")


@dataclass
class _Running:
    job: _Job
    process: Any
    started: float
    deadline: float


def _run_jobs(pending: Sequence[_Job], exercises: dict[str, ExerciseInfo], context: Any, jobs: int,
              record: Callable[[NotebookGrade], None]) -> None:
    """Run the jobs, `jobs` at a time; every job ends with a grade, whatever happened to it."""
    queue = deque(pending)
    running: dict[int, _Running] = {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                job = queue.popleft()
                started = time.perf_counter()
                try:
                    Path(job.job_dir).mkdir(parents=True)
                    process = context.Process(target=_run_one, args=(job,), daemon=True)
                    process.start()
                except Exception as error:  # noqa: BLE001 - e.g. the fork server died; grade the others
                    ex = exercises[job.exercise_id]
                    record(NotebookGrade(job.student, ex, _zero(ex), f"the grader could not start it: {error}",
                                         time.perf_counter() - started))
                    continue
                deadline = started + job.timeout + STARTUP_SECONDS + KILL_GRACE_SECONDS
                running[process.sentinel] = _Running(job, process, started, deadline)
            wait = min(item.deadline for item in running.values()) - time.perf_counter()
            ready = set(multiprocessing.connection.wait(list(running), timeout=max(0.0, wait)))
            now = time.perf_counter()
            for sentinel in list(running):
                item = running[sentinel]
                if sentinel in ready or now >= item.deadline:
                    del running[sentinel]
                    record(_finish(item, exercises[item.job.exercise_id], killed=sentinel not in ready))
    finally:
        for item in running.values():  # interrupted: leave nothing behind
            _stop(item)


def _stop(item: _Running) -> None:
    _kill_session(item.process.pid)
    _kill_group(_read_pid(Path(item.job.job_dir) / "kernel.pid"))
    item.process.join(5)


def _finish(item: _Running, exercise: ExerciseInfo, *, killed: bool) -> NotebookGrade:
    job = item.job
    try:
        if killed:
            _stop(item)
        else:
            item.process.join()
        seconds = time.perf_counter() - item.started
        try:
            status = json.loads(_read_capped(job.status_file) or "null")
        except ValueError:
            status = None
        if not isinstance(status, dict):
            status = None
        if status is None:
            exit_code = item.process.exitcode
            reason = (f"did not finish within {job.timeout:g} s" if killed
                      else f"its grading process stopped unexpectedly ({_exit_description(exit_code)})")
            if not killed:
                _kill_session(item.process.pid)
                _kill_group(_read_pid(Path(job.job_dir) / "kernel.pid"))
            return NotebookGrade(job.student, exercise, _zero(exercise), reason, seconds)
        return _grade_from(job, exercise, status, _read_results(job.results_file), seconds)
    except Exception as error:  # noqa: BLE001 - never lose the other students' results
        return NotebookGrade(job.student, exercise, _zero(exercise), f"the grader failed on it: "
                             f"{type(error).__name__}: {error}", time.perf_counter() - item.started)
    finally:
        _remove_tree(job.job_dir)


def _read_results(path: Path, limit: int = 1_000_000) -> list[str]:
    """The results file's lines; at most `limit` characters are read, whoever wrote it."""
    try:
        with path.open(encoding="utf-8", errors="replace") as results:
            return results.read(limit).splitlines()
    except OSError:
        return []


def _grade_from(job: _Job, exercise: ExerciseInfo, status: dict[str, Any], lines: Iterable[str],
                seconds: float) -> NotebookGrade:
    reasons = problems(status, job.timeout, job.max_output_bytes)
    scores, missing = scores_from_results(exercise, lines)
    if scores is None and not reasons:
        last_error = status.get("errors") or []
        reasons.append(missing + (f" (its last error: {last_error[-1]})" if last_error else ""))
    phases = {**status.get("phases", {}), "process start and exit": seconds - float(status.get("seconds", seconds))}
    if reasons or scores is None:
        return NotebookGrade(job.student, exercise, _zero(exercise), "; ".join(reasons), seconds, phases=phases)
    return NotebookGrade(job.student, exercise, scores, "", seconds, phases=phases)


def problems(status: dict[str, Any], timeout: float, max_output_bytes: int) -> list[str]:
    """Why a job's notebook scores 0 whatever its results say, from its process's status."""
    reasons = []
    state, detail = status.get("state"), status.get("detail", "")
    if state == "timeout":
        reasons.append(f"did not finish within {timeout:g} s")
    elif state == "kernel_died" and not status.get("stopped"):
        reasons.append(f"the kernel died ({detail})" if detail else "the kernel died")
    elif state in ("bad_notebook", "copy_failed", "runner_error"):
        reasons.append(detail)
    printed = int(status.get("printed", 0))
    if printed > max_output_bytes:
        stopped = " (stopped there)" if status.get("stopped") else ""
        reasons.append(f"printed {printed / 1e6:.1f} MB, over the {max_output_bytes / 1e6:g} MB limit{stopped}")
    deleted = status.get("deleted") or []
    if deleted:
        reasons.append("deleted files from its folder: " + ", ".join(deleted[:5]) + (" ..." if len(deleted) > 5 else ""))
    return reasons


def scores_from_results(exercise: ExerciseInfo, lines: Iterable[str]) -> tuple[tuple[CheckScore, ...] | None, str]:
    """Each check's score from check()'s JSON lines (the last report of a check wins), or None and
    what is missing. A check scores its points when reported passed, else 0: the points written in
    the file are not trusted beyond that."""
    reported: dict[str, dict[str, Any]] = {}
    expected = dict(exercise.checks)
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("exercise") == exercise.id and record.get("name") in expected:
            reported[record["name"]] = record
    if not reported:
        return None, f'the notebook never ran check("{exercise.id}")'
    if len(reported) < len(expected):
        return None, f'check("{exercise.id}") reported {len(reported)} of its {len(expected)} checks'
    scores = []
    for name, points in exercise.checks:
        passed = reported[name].get("passed") is True
        message = "" if passed else str(reported[name].get("message", ""))[:1000]
        scores.append(CheckScore(name, points if passed else 0.0, points, passed, message))
    return tuple(scores), ""


def _remove_tree(path: str | Path) -> None:
    """rmtree that gets past the read-only files and folders a submission may leave behind. It
    never follows a symbolic link, and never changes the mode of one's target."""

    def force(function: Any, target: str, _error: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            if not os.path.islink(target):
                os.chmod(target, 0o700)
            function(target)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=force)
    else:
        shutil.rmtree(path, onerror=force)


def _read_capped(path: Path, limit: int = 1_000_000) -> str | None:
    """A file the job wrote (or its notebook overwrote): at most `limit` characters, None if it
    is missing or longer, so the grader never holds megabytes."""
    try:
        with path.open(encoding="utf-8", errors="replace") as source:
            text = source.read(limit + 1)
    except OSError:
        return None
    return text if len(text) <= limit else None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


if os.environ.get(_PRELOAD_VARIABLE) == "1" and multiprocessing.parent_process() is None:
    _preload()


def run_cli(args: Any) -> int:
    """`course-lib grade`, given the parsed arguments (see course_lib.cli)."""
    from .report import summary, write_csv, write_report

    out = Path(args.out)
    report = Path(args.report) if args.report else out.with_suffix(".md")
    for path in (out, report):
        if not path.resolve().parent.is_dir():  # found out now, not after grading the class
            print(f"course-lib grade: cannot write {path}: no folder {path.resolve().parent}", file=sys.stderr)
            return 2
    try:
        run = grade(args.submissions, exercises_dir=args.exercises, timeout=args.timeout, jobs=args.jobs,
                    extra_checks=args.extra_checks, max_output_mb=args.max_output_mb,
                    max_memory_mb=args.max_memory_mb, fresh_kernels=args.fresh_kernels or None)
    except (GradeError, ValueError) as error:
        print(f"course-lib grade: {error}", file=sys.stderr)
        return 2
    write_csv(run, out)
    write_report(run, report)
    print(summary(run, [out, report]))
    return 0
