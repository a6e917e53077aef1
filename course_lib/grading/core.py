"""Exercise checks: what `check("ex1")` runs in a learner's notebook and `course-lib grade` scores.

An exercise is a list of checks, each worth some points. A check is a function of the learner's
namespace (the notebook's globals): it returns when the learner's code behaves, and raises
`CheckFailed` with a message the learner can act on ("a 400 was retried 3 times; only transient
failures should be retried") when it does not, never the answer itself.

    from course_lib.grading import Exercise, CheckFailed

    EX1 = Exercise("ex1", "Retry on 429 in a FastAPI agent", "ex1_retry.ipynb")

    @EX1.check("retries a 429 until the call succeeds", points=2)
    def retries_429(ns):
        ...
        if attempts != 3:
            raise CheckFailed(f"3 calls expected (two 429s, then success); your code made {attempts}")

In the notebook, `check("ex1")` runs every check of ex1 against the caller's globals, prints one
line per check and raises `ExerciseIncomplete` if any failed, so nbmake fails an unfinished
exercise. Any other exception from the learner's code fails that check with its type and message
(a stub's `NotImplementedError("...what to write...")` among them); the other checks still run.
When the environment variable COURSE_LIB_GRADE_RESULTS names a file (the grader sets it), the
results are also written there as JSON lines, one per check. COURSE_LIB_EXTRA_CHECKS may name a
folder of instructor modules that add checks with `Exercise.check` (see `load_extra_checks`).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EXERCISES", "CheckFailed", "CheckResult", "Exercise", "ExerciseIncomplete", "check",
           "exercise", "load_extra_checks"]

RESULTS_VARIABLE = "COURSE_LIB_GRADE_RESULTS"
EXTRA_CHECKS_VARIABLE = "COURSE_LIB_EXTRA_CHECKS"
Namespace = Mapping[str, Any]
CheckFn = Callable[[Namespace], "str | None"]


class CheckFailed(AssertionError):
    """A check's verdict: what the learner's code did wrong, in words they can act on."""


class ExerciseIncomplete(AssertionError):
    """Raised by `check()` when a check failed, so that the notebook (and nbmake) fails."""


@dataclass(frozen=True)
class CheckResult:
    exercise: str
    name: str
    points: float
    max_points: float
    passed: bool
    message: str = ""

    def line(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        detail = f": {self.message}" if self.message else ""
        return f"{mark} [{self.points:g}/{self.max_points:g}] {self.name}{detail}"


@dataclass
class _Check:
    name: str
    points: float
    run: Callable[[Namespace], str | None]


@dataclass
class Exercise:
    """One exercise: its id ("ex1"), title, notebook file name, and its checks in order."""

    id: str
    title: str
    notebook: str
    checks: list[_Check] = field(default_factory=list)

    def __post_init__(self) -> None:
        EXERCISES[self.id] = self

    def check(self, name: str, *, points: float = 1) -> Callable[[CheckFn], CheckFn]:
        """Decorator adding a check worth `points`; names are unique within the exercise. A check
        may return a note (a str) that is shown beside its PASS, e.g. that part of it was skipped."""
        if any(c.name == name for c in self.checks):
            raise ValueError(f"{self.id} already has a check named {name!r}")
        if not points > 0:
            raise ValueError(f"points must be > 0, got {points!r}")

        def add(run: CheckFn) -> CheckFn:
            self.checks.append(_Check(name, float(points), run))
            return run

        return add

    @property
    def max_points(self) -> float:
        return sum(c.points for c in self.checks)

    def run(self, namespace: Namespace) -> list[CheckResult]:
        """Every check against `namespace`; a failure or crash of one never stops the others."""
        results = []
        for item in self.checks:
            try:
                note = item.run(namespace)
            except CheckFailed as failed:
                results.append(CheckResult(self.id, item.name, 0.0, item.points, False, str(failed)))
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # noqa: BLE001 - the learner's code may raise anything, SystemExit too
                message = f"{type(error).__name__}: {error}"
                results.append(CheckResult(self.id, item.name, 0.0, item.points, False, message[:500]))
            else:
                results.append(CheckResult(self.id, item.name, item.points, item.points, True,
                                           note if isinstance(note, str) else ""))
        return results


EXERCISES: dict[str, Exercise] = {}
"""Every exercise by id, filled as their modules are imported (see `exercise`)."""
_MODULES = {"ex1": "ex1_retry", "ex2": "ex2_circuit_breaker", "ex3": "ex3_fallback_chain",
            "ex4": "ex4_structured_logging"}


def exercise(exercise_id: str) -> Exercise:
    """The exercise `exercise_id` with its checks (and any instructor's extra checks) loaded: one of
    ex1-ex4, or one that a module in COURSE_LIB_EXTRA_CHECKS registers."""
    if exercise_id in _MODULES:
        importlib.import_module(f"{__package__}.{_MODULES[exercise_id]}")
    folder = os.environ.get(EXTRA_CHECKS_VARIABLE)
    if folder:
        load_extra_checks(Path(folder))
    if exercise_id not in EXERCISES:
        raise ValueError(f"exercise must be one of {', '.join(_MODULES)} or one registered by "
                         f"{EXTRA_CHECKS_VARIABLE}, got {exercise_id!r}")
    return EXERCISES[exercise_id]


_LOADED_EXTRAS: set[Path] = set()


def load_extra_checks(folder: Path) -> None:
    """Import every `*.py` in `folder` once; each adds checks with `exercise("exN").check(...)`,
    so an instructor's graded checks need not be public."""
    for path in sorted(Path(folder).glob("*.py")):
        resolved = path.resolve()
        if resolved in _LOADED_EXTRAS:
            continue
        _LOADED_EXTRAS.add(resolved)
        spec = importlib.util.spec_from_file_location(f"course_lib_extra_checks_{path.stem}", resolved)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)


def check(exercise_id: str, namespace: Namespace | None = None) -> None:
    """Run an exercise's checks against `namespace` (default: the caller's globals, i.e. the
    notebook's), print one line per check, record them for the grader, and raise
    ExerciseIncomplete if any failed. Returns nothing, so a notebook's last cell shows only the
    printed lines (`exercise(exercise_id).run(namespace)` gives the results themselves)."""
    if namespace is None:
        caller = inspect.currentframe()
        namespace = caller.f_back.f_globals if caller is not None and caller.f_back is not None else {}
    ex = exercise(exercise_id)
    results = ex.run(namespace)
    for result in results:
        print(result.line())
    scored = sum(r.points for r in results)
    print(f"{ex.id}: {scored:g}/{ex.max_points:g} points")
    target = os.environ.get(RESULTS_VARIABLE)
    if target:
        with open(target, "a", encoding="utf-8") as out:
            for result in results:
                out.write(json.dumps(asdict(result)) + "\n")
    failed = [r for r in results if not r.passed]
    if failed:
        raise ExerciseIncomplete(f"{len(failed)} of {len(results)} checks failed; the lines above say what to fix")
