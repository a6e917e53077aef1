"""Exercise 1 (retry on 429 in a FastAPI agent): the checks pass the reference solution, fail every
check of the untouched exercise with its stub's message, catch every buggy submission in
tests/mutants/ex1 with a message that names its mistake, pass other correct solutions, and stay
on virtual time whatever the learner's code does."""

from __future__ import annotations

import json
import re
import textwrap
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from grading_support import (
    EXERCISES,
    SOLUTIONS,
    execute,
    graded as graded_as,
    mutants_of,
    notebook_folder,
    score,
)

from course_lib.grading import CheckFailed, CheckResult, exercise
from course_lib.grading import ex1_retry as checks

NOTEBOOK = "ex1_retry.ipynb"
MUTANT_DIR, EXPECTED, MUTANT_PATHS = mutants_of("ex1")
RETRY_STUB = "NotImplementedError: write retry_with_backoff: return a decorator"
AGENT_STUB = "NotImplementedError: return create_app(client, ask=...)"


graded = partial(graded_as, exercise_id="ex1")


def cells(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["cells"]  # type: ignore[no-any-return]


def source(cell: dict[str, Any]) -> str:
    return "".join(cell["source"])


# --- the reference solution and the untouched exercise -----------------------------------------

def test_the_solution_gets_full_marks_and_runs_without_errors() -> None:
    results = graded(SOLUTIONS / NOTEBOOK)
    assert [r.message for r in results if not r.passed] == []
    assert score(list(results)) == (15, 15)
    assert execute(SOLUTIONS / NOTEBOOK).errors == []


def test_the_untouched_exercise_fails_every_check_with_its_stubs_message() -> None:
    results = graded(EXERCISES / NOTEBOOK)
    assert not any(r.passed for r in results)
    messages = [r.message for r in results]
    assert all(m.startswith(RETRY_STUB) for m in messages[:7]), messages
    assert all(m.startswith(AGENT_STUB) for m in messages[7:]), messages
    assert len(messages) == 9


def test_checks_and_points_are_the_ones_the_task_text_lists() -> None:
    ex = exercise("ex1")
    assert [c.points for c in ex.checks] == [1, 2, 2, 1, 2, 2, 2, 2, 1] and ex.max_points == 15
    task = " ".join(source(c) for c in cells(EXERCISES / NOTEBOOK) if c["cell_type"] == "markdown")
    task = re.sub(r"\s+", " ", task)
    for promise in [("`retry_with_backoff(max_attempts=4, base_delay=0.5, max_delay=8.0, sleep=time.sleep, "
                     "rng=random.random)`"), "`build_agent(provider, sleep)`", '`"insufficient_quota"`',
                    "`openai.APIConnectionError` and `openai.APITimeoutError`", "400, 401, 403, 404 or 422",
                    "`KeyError`", "`rng() * min(max_delay, base_delay * 2 ** (k - 1))`", "`rng()` once per wait",
                    "`retry-after-ms` (milliseconds) or `retry-after` (seconds)", "the larger of",
                    "never `time.sleep` itself", "raise the last error itself", "at most 4 calls",
                    "15 points in all", "Importing `course_lib.retry` does not count"]:
        assert promise in task, promise


def test_the_exercise_is_the_solution_with_stubs_and_ends_with_the_check_cell() -> None:
    exercise_cells, solution_cells = cells(EXERCISES / NOTEBOOK), cells(SOLUTIONS / NOTEBOOK)
    assert [c["cell_type"] for c in exercise_cells] == [c["cell_type"] for c in solution_cells]
    differ = [i for i, (a, b) in enumerate(zip(exercise_cells, solution_cells)) if source(a) != source(b)]
    assert differ and all("raise NotImplementedError(" in source(exercise_cells[i]) for i in differ)
    for notebook in (exercise_cells, solution_cells):
        assert source(notebook[-1]) == 'check("ex1")'
        assert not any(re.search(r"^\s*await ", source(c), re.MULTILINE) for c in notebook if c["cell_type"] == "code")
        assert not any("course_lib.retry" in source(c) for c in notebook if c["cell_type"] == "code")


# --- the buggy submissions -----------------------------------------------------------------------

def test_there_are_at_least_six_mutants_each_with_an_expected_message() -> None:
    assert len(MUTANT_PATHS) >= 6
    assert sorted(EXPECTED) == [p.stem for p in MUTANT_PATHS]


@pytest.mark.parametrize("path", MUTANT_PATHS, ids=lambda p: p.stem)
def test_each_mutant_is_the_solution_with_one_code_cell_changed(path: Path) -> None:
    mutant, solution = cells(path), cells(SOLUTIONS / NOTEBOOK)
    assert [source(c) for c in mutant if c["cell_type"] == "markdown"] == \
        [source(c) for c in solution if c["cell_type"] == "markdown"]
    changed = [i for i, (a, b) in enumerate(zip(mutant, solution)) if source(a) != source(b)]
    assert len(mutant) == len(solution) and len(changed) == 1


@pytest.mark.parametrize("path", MUTANT_PATHS, ids=lambda p: p.stem)
def test_each_mutant_loses_points_with_a_message_naming_its_mistake(path: Path) -> None:
    results = graded(path)
    points, most = score(list(results))
    assert points < most
    failed = [r.message for r in results if not r.passed]
    assert any(EXPECTED[path.stem] in message for message in failed), failed


def test_the_catch_rate_is_100_percent(capsys: pytest.CaptureFixture[str]) -> None:
    caught = [p.stem for p in MUTANT_PATHS
              if any(EXPECTED[p.stem] in r.message for r in graded(p) if not r.passed)]
    with capsys.disabled():
        print(f"\nex1 catch rate: {len(caught)}/{len(MUTANT_PATHS)} mutants")
    assert caught == [p.stem for p in MUTANT_PATHS]


# --- other learners' code: correct in another way, or wrong in ways no mutant shows ------------

PREAMBLE = """
import random, time
import openai
from course_lib.llm import make_client
from starter_agent import ask_model, create_app
"""

WHILE_LOOP_SOLUTION = """
def retry_with_backoff(max_attempts=4, base_delay=0.5, max_delay=8.0, sleep=time.sleep, rng=random.random):
    def decorate(fn):
        def wrapper(*args, **kwargs):
            attempt = 0
            while True:
                attempt += 1
                try:
                    return fn(*args, **kwargs)
                except openai.RateLimitError as exc:  # before APIStatusError, its parent class
                    if exc.code == "insufficient_quota" or attempt >= max_attempts:
                        raise
                    error = exc
                except openai.APIStatusError as exc:
                    if exc.status_code < 500 or attempt >= max_attempts:
                        raise
                    error = exc
                except openai.APIConnectionError as exc:
                    if attempt >= max_attempts:
                        raise
                    error = exc
                ceiling = min(max_delay, base_delay * 2 ** (attempt - 1))
                headers = error.response.headers if hasattr(error, "response") else {}
                asked = headers.get("retry-after-ms")
                asked = float(asked) / 1000 if asked else float(headers.get("retry-after", 0))
                backoff = rng() * ceiling
                sleep(asked if asked else backoff)  # the server's word instead of ours
        return wrapper
    return decorate


def build_agent(provider, sleep):
    return create_app(make_client(provider, max_retries=0), ask=retry_with_backoff(sleep=sleep)(ask_model))
"""


def namespace(code: str) -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": "__main__"}
    with notebook_folder(EXERCISES):
        exec(compile(textwrap.dedent(PREAMBLE + code), "<learner>", "exec"), ns)  # noqa: S102 - a learner's cells
    return ns


def run_all(ns: dict[str, Any]) -> list[CheckResult]:
    with notebook_folder(EXERCISES):
        return exercise("ex1").run(ns)


def test_a_differently_written_correct_solution_gets_full_marks() -> None:
    results = run_all(namespace(WHILE_LOOP_SOLUTION))
    assert [r.message for r in results if not r.passed] == []


def test_a_retry_that_calls_time_sleep_fails_without_sleeping_and_time_sleep_is_restored() -> None:
    ns = namespace(WHILE_LOOP_SOLUTION.replace("sleep(asked if asked else backoff)",
                                               "time.sleep(asked if asked else backoff)"))
    real_sleep, started = time.sleep, time.perf_counter()
    results = run_all(ns)
    assert time.perf_counter() - started < 2  # the waits it asked for add up to many seconds
    assert time.sleep is real_sleep
    failed = {r.name: r.message for r in results if not r.passed}
    assert any("called time.sleep(" in m and "instead of the `sleep` it was given" for m in failed.values())
    assert any(m.startswith("your agent called time.sleep(") for m in failed.values()), failed


def test_a_wrapper_that_never_stops_is_stopped() -> None:
    ns = namespace("""
def retry_with_backoff(max_attempts=4, base_delay=0.5, max_delay=8.0, sleep=time.sleep, rng=random.random):
    def decorate(fn):
        def wrapper(*args, **kwargs):
            while True:
                try:
                    return fn(*args, **kwargs)
                except Exception:
                    sleep(rng() * base_delay)
        return wrapper
    return decorate
""")
    with pytest.raises(CheckFailed, match=r"your wrapper did not stop: 51 calls and 50 waits with max_attempts=4"):
        checks.stops_and_reraises(ns)


def test_course_lib_retry_is_found_however_it_is_borrowed() -> None:
    ns = namespace(WHILE_LOOP_SOLUTION + """
from course_lib.retry import is_transient as transient


def retry_with_backoff(max_attempts=4, base_delay=0.5, max_delay=8.0, sleep=time.sleep, rng=random.random):
    def decorate(fn):
        def wrapper(*args, **kwargs):
            for attempt in range(1, max_attempts + 1):
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    if attempt == max_attempts or not transient(exc):
                        raise
                    sleep(rng() * min(max_delay, base_delay * 2 ** (attempt - 1)))
        return wrapper
    return decorate
""")
    with pytest.raises(CheckFailed, match=r"built on course_lib\.retry \(it uses its transient\)"):
        checks.writes_its_own_retry(ns)
    ns["helper"] = ns.pop("transient")  # now the name the wrapper uses is the notebook's own function...
    exec("def transient(exc):\n    return helper(exc)", ns)  # noqa: S102 - ...which calls into course_lib.retry
    with pytest.raises(CheckFailed, match=r"built on course_lib\.retry \(it runs its is_transient\(\)\)"):
        checks.writes_its_own_retry(ns)


def test_missing_names_are_reported_by_name() -> None:
    results = run_all({"__name__": "__main__"})
    missing = "`{}` is not defined: run the cell that defines it, and keep its name"
    assert [r.message for r in results] == [missing.format("retry_with_backoff")] * 7 + \
        [missing.format("build_agent")] * 2


def test_wrapping_or_replacing_the_last_error_is_named() -> None:
    wrapped = namespace(WHILE_LOOP_SOLUTION.replace(
        "                    if exc.status_code < 500 or attempt >= max_attempts:\n                        raise",
        "                    if exc.status_code < 500:\n                        raise\n"
        "                    if attempt >= max_attempts:\n                        raise RuntimeError('gave up')"))
    with pytest.raises(CheckFailed, match=r"raised RuntimeError: gave up instead of the error itself"):
        checks.stops_and_reraises(wrapped)
    first = namespace(WHILE_LOOP_SOLUTION.replace("            attempt = 0\n",
                                                  "            attempt = 0\n            errors = []\n").replace(
        "                    if exc.status_code < 500 or attempt >= max_attempts:\n                        raise",
        "                    errors.append(exc)\n                    if exc.status_code < 500:\n"
        "                        raise\n                    if attempt >= max_attempts:\n"
        "                        raise errors[0]"))
    with pytest.raises(CheckFailed, match=r"raised the error of attempt 1, not the last one \(attempt 4\)"):
        checks.stops_and_reraises(first)


def test_an_unfinished_helper_stub_shows_its_own_message() -> None:
    ns = namespace(WHILE_LOOP_SOLUTION.replace(
        "                ceiling = min(", "                raise NotImplementedError('write the ceiling')\n"
        "                ceiling = min("))
    with pytest.raises(NotImplementedError, match="write the ceiling"):
        checks.retries_transient_failures(ns)


def test_the_failures_are_the_sdks_own_exception_classes() -> None:
    import openai

    assert type(checks.status_error(429, code="insufficient_quota")) is openai.RateLimitError
    assert checks.status_error(429, code="insufficient_quota").code == "insufficient_quota"
    assert type(checks.status_error(503)) is openai.InternalServerError
    assert type(checks.status_error(422)) is openai.UnprocessableEntityError
    limited = checks.status_error(429, headers={"retry-after-ms": "1500"})
    assert limited.response.headers["retry-after-ms"] == "1500" and limited.status_code == 429
