"""Exercise 4 (structured JSON logging, read back in lnav): the solution passes, the stub fails
every check with its own message, every buggy submission in tests/mutants/ex4/ is caught with a
message naming its mistake, other correct answers are not failed, and the checks leave logging
as they found it. Notebooks run in-process (tests/grading_support.py)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from grading_support import (
    CHECK_CELL,
    EXERCISES,
    SOLUTIONS,
    clean_namespace,
    code_cells,
    execute,
    graded as graded_as,
    mutants_of,
    notebook_folder,
    score,
)

from course_lib.grading import (
    CheckFailed,
    CheckResult,
    ExerciseIncomplete,
    check,
    exercise,
)
from course_lib.grading.ex4_structured_logging import KEY, LNAV_SKIPPED

NAME = "ex4_structured_logging.ipynb"
EXERCISE, SOLUTION = EXERCISES / NAME, SOLUTIONS / NAME
MUTANT_DIR, EXPECTED, _mutants = mutants_of("ex4")
MUTANT_NAMES = [path.stem for path in _mutants]
LNAV_CHECK = "lnav reads the lines with the course's format (counts per request and level match)"
TS_CHECK = "ts is the record's time in UTC, ISO 8601 with milliseconds and its zone"
OWN_CHECK = "JsonFormatter is your own logging.Formatter (course_lib.logs is not used)"
HAS_LNAV = shutil.which("lnav") is not None


graded = partial(graded_as, exercise_id="ex4")


solution_namespace = partial(clean_namespace, SOLUTION)


def failed(results: list[CheckResult] | tuple[CheckResult, ...]) -> dict[str, str]:
    return {r.name: r.message for r in results if not r.passed}


def run_checks(namespace: dict[str, Any], *names: str) -> dict[str, CheckResult]:
    """Only the checks named (all of them take a while), each result by name, as Exercise.run gives it."""
    results: dict[str, CheckResult] = {}
    for item in exercise("ex4").checks:
        if item.name not in names:
            continue
        try:
            note = item.run(namespace)
        except CheckFailed as failure:
            results[item.name] = CheckResult("ex4", item.name, 0, item.points, False, str(failure))
        else:
            results[item.name] = CheckResult("ex4", item.name, item.points, item.points, True, note or "")
    assert sorted(results) == sorted(names), names
    return results


def run_variant(replacements: dict[str, str]) -> list[CheckResult]:
    """The checks against the solution's code with `replacements` applied (each must match once);
    the solution's own cells must still run without an error."""
    sources = code_cells(SOLUTION)
    for old, new in replacements.items():
        assert sum(code.count(old) for code in sources) == 1, old
        sources = [code.replace(old, new) for code in sources]
    namespace: dict[str, Any] = {"__name__": "__main__"}
    with notebook_folder(SOLUTIONS):
        for code in sources:
            exec(compile(code, "<variant>", "exec"), namespace)  # noqa: S102
        return exercise("ex4").run(namespace)


# --- the solution and the stub --------------------------------------------------------------------
@pytest.mark.skipif(not HAS_LNAV and not os.environ.get("CI"), reason="lnav is not installed (CI installs it)")
def test_the_solution_gets_full_marks_with_lnav_reading_its_lines() -> None:
    assert HAS_LNAV, "CI must install lnav (apt-get install lnav)"
    results = graded(SOLUTION)
    assert failed(results) == {}
    assert score(list(results)) == (17, 17)
    assert len(results) == 12


def test_the_solution_notebook_runs_every_cell_and_ends_with_the_check_cell() -> None:
    solution_namespace()
    last = [cell for cell in json.loads(SOLUTION.read_text())["cells"] if cell["cell_type"] == "code"][-1]
    assert CHECK_CELL.match("".join(last["source"])) and "".join(last["source"]) == 'check("ex4")'


def test_the_untouched_exercise_fails_every_check_with_a_stub_message() -> None:
    results = graded(EXERCISE)
    assert len(results) == 12 and score(list(results)) == (0, 17)
    for result in results:
        assert not result.passed
        assert result.message.startswith("NotImplementedError: write "), (result.name, result.message)


def test_exercise_and_solution_are_the_same_notebook_except_the_stubs() -> None:
    exercise_cells = json.loads(EXERCISE.read_text())["cells"]
    solution_cells = json.loads(SOLUTION.read_text())["cells"]
    markdown = [[c["source"] for c in cells if c["cell_type"] == "markdown"] for cells in (exercise_cells, solution_cells)]
    assert markdown[0] == markdown[1]
    stubs = [c for c in code_cells(EXERCISE) if "NotImplementedError" in c]
    assert len(stubs) == 3 and not any("NotImplementedError" in c for c in code_cells(SOLUTION))
    shared = [c for c in code_cells(EXERCISE) if c not in stubs]
    assert all(c in code_cells(SOLUTION) for c in shared)


def test_check_prints_a_line_per_check_and_raises_while_the_exercise_is_unfinished(
        capsys: pytest.CaptureFixture[str]) -> None:
    executed = execute(EXERCISE)
    with pytest.raises(ExerciseIncomplete, match="12 of 12 checks failed"):
        check("ex4", executed.namespace)
    out = capsys.readouterr().out
    assert out.count("FAIL [0/") == 12 and "ex4: 0/17 points" in out


# --- the mutants -----------------------------------------------------------------------------------
def test_there_are_at_least_six_mutants_each_with_the_fragment_its_message_must_hold() -> None:
    assert len(MUTANT_NAMES) >= 6
    assert sorted(EXPECTED) == MUTANT_NAMES


@pytest.mark.parametrize("name", MUTANT_NAMES)
def test_each_mutant_loses_points_with_a_message_naming_its_mistake(name: str) -> None:
    results = graded(MUTANT_DIR / f"{name}.ipynb")
    points, most = score(list(results))
    assert points < most
    messages = failed(results)
    assert any(EXPECTED[name] in message for message in messages.values()), messages


def test_the_catch_rate_is_100_percent(capsys: pytest.CaptureFixture[str]) -> None:
    caught = [name for name in MUTANT_NAMES
              if any(EXPECTED[name] in m for m in failed(graded(MUTANT_DIR / f"{name}.ipynb")).values())]
    with capsys.disabled():
        print(f"\nex4 catch rate: {len(caught)}/{len(MUTANT_NAMES)} mutants")
    assert caught == MUTANT_NAMES


@pytest.mark.parametrize(("name", "failing"), [
    ("uses_course_lib_logs", {OWN_CHECK}),  # its code is the solution's: only the import is wrong
    ("local_time_without_zone", {TS_CHECK}),
    ("id_in_a_global_variable", {"two requests served at the same time each keep their own id"}),
])
def test_a_mutant_with_one_narrow_mistake_fails_only_the_check_about_it(name: str, failing: set[str]) -> None:
    assert set(failed(graded(MUTANT_DIR / f"{name}.ipynb"))) == failing


# --- other correct answers pass --------------------------------------------------------------------
FILTER_INSTEAD = {
    '                "request_id": REQUEST_ID.get()}': '                "request_id": getattr(record, "rid", None)}',
    "    handler.setFormatter(JsonFormatter())\n":
        "    handler.setFormatter(JsonFormatter())\n"
        "    handler.addFilter(lambda record: setattr(record, 'rid', REQUEST_ID.get()) or True)\n",
}
ISOFORMAT = {
    '    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"':
        "    return moment.isoformat()",
}
SHORT_ERROR = {
    '    return {"type": kind.__name__, "message": str(error),\n'
    '            "traceback": "".join(traceback.format_exception(*exc_info))}':
        '    return {"type": kind.__name__, "message": str(error)}',
}


def test_other_correct_answers_get_full_marks() -> None:
    """The request id stamped on the record by a handler's filter, ts with +00:00 and microseconds, an
    error field without a traceback: all correct (one run for the three, to keep the suite quick)."""
    assert failed(run_variant({**FILTER_INSTEAD, **ISOFORMAT, **SHORT_ERROR})) == {}


# --- the checks themselves -------------------------------------------------------------------------
def test_each_check_is_quick_and_leaves_logging_the_time_zone_and_stdout_as_it_found_them() -> None:
    namespace = solution_namespace()
    root, errors = logging.getLogger(), logging.getLogger("ex4.check.errors")
    before = (list(root.handlers), root.level, list(errors.handlers), errors.level, errors.propagate,
              os.environ.get("TZ"), time.localtime(0).tm_hour)
    for item in exercise("ex4").checks:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as out:
            item.run(namespace)
        assert time.perf_counter() - started < 1.0, item.name
        assert out.getvalue() == ""
        after = (list(root.handlers), root.level, list(errors.handlers), errors.level, errors.propagate,
                 os.environ.get("TZ"), time.localtime(0).tm_hour)
        assert after == before, item.name


def test_without_lnav_the_viewer_check_passes_saying_it_was_skipped(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no lnav on PATH
    monkeypatch.delenv("CI", raising=False)
    results = run_checks(solution_namespace(), LNAV_CHECK)
    assert results[LNAV_CHECK].passed and results[LNAV_CHECK].message == LNAV_SKIPPED
    assert LNAV_SKIPPED in results[LNAV_CHECK].line()


def test_without_lnav_under_ci_the_viewer_check_fails_saying_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    results = run_checks(solution_namespace(), LNAV_CHECK)
    assert not results[LNAV_CHECK].passed
    assert "lnav is not installed" in results[LNAV_CHECK].message


@pytest.mark.skipif(not HAS_LNAV and not os.environ.get("CI"), reason="lnav is not installed (CI installs it)")
def test_lnav_fails_a_timestamp_it_cannot_read(monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = solution_namespace()
    monkeypatch.setitem(namespace, "utc_iso", lambda seconds: time.strftime("%d/%m/%Y %H:%M", time.gmtime(seconds)))
    messages = failed(list(run_checks(namespace, LNAV_CHECK, TS_CHECK).values()))
    assert "not the time they were written" in messages[LNAV_CHECK] or "could not read" in messages[LNAV_CHECK]
    assert "is not ISO 8601" in messages[TS_CHECK]


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="the local-time check needs time.tzset (Unix)")
def test_local_time_labelled_as_utc_is_caught_whatever_the_machines_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = solution_namespace()
    local = namespace["datetime"].fromtimestamp
    monkeypatch.setitem(namespace, "utc_iso", lambda seconds: local(seconds).isoformat(timespec="milliseconds") + "Z")
    assert "local time labelled as UTC" in run_checks(namespace, TS_CHECK)[TS_CHECK].message


def test_a_timestamp_without_milliseconds_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = solution_namespace()
    monkeypatch.setitem(namespace, "utc_iso", lambda seconds: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)))
    assert "has no milliseconds" in run_checks(namespace, TS_CHECK)[TS_CHECK].message


@pytest.mark.parametrize("use", [
    "from course_lib.logs import log_context",
    "import course_lib.logs as structured",
    "def helper():\n    from course_lib import logs\n    return logs",
    "def helper():\n    import course_lib.logs\n    return course_lib.logs.new_request_id()",
])
def test_any_use_of_course_lib_logs_is_found(use: str) -> None:
    namespace = dict(solution_namespace())
    exec(compile(use, "<use>", "exec"), namespace)  # noqa: S102
    result = run_checks(namespace, OWN_CHECK)[OWN_CHECK]
    assert not result.passed and "course_lib.logs" in result.message


def test_the_planted_key_is_one_the_redaction_finds_and_a_real_key_shape() -> None:
    from course_lib.redaction import redact

    assert KEY.startswith("sk-proj-") and "T3BlbkFJ" in KEY and len(KEY) > 150
    assert redact(f"Bearer {KEY}") == "Bearer [REDACTED:openai_key]"
