"""Run an exercise notebook in-process and grade it, fast enough for `make test`.

The grader (`course-lib grade`) executes each notebook in its own kernel; starting kernels for
every solution, stub and mutant would make the tests slow. Here the notebook's code cells run
in order in a fresh namespace instead, the way a kernel with allow_errors would run them: a
cell that raises is recorded and the next cell still runs. The final `check("exN")` cell is
skipped, and the exercise's checks run on the namespace directly, so a test sees every
`CheckResult` rather than printed lines.

While the cells and checks run, the working directory is the notebook's folder, and that folder
(then exercises/, whose support files the grader copies into every submission) is first on
sys.path, so `import starter_agent` works for a notebook in solutions/ or tests/mutants/ too.
IPython-only lines (`%magic`, `!shell`) are dropped; top-level `await` is not supported (the
exercise notebooks are synchronous).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from course_lib.grading import CheckResult, exercise

ROOT = Path(__file__).resolve().parents[1]
EXERCISES, SOLUTIONS, MUTANTS = ROOT / "exercises", ROOT / "solutions", ROOT / "tests" / "mutants"
CHECK_CELL = re.compile(r"""^\s*check\(\s*["']ex\d+["']\s*\)\s*$""")


@dataclass
class Executed:
    """A notebook's namespace after its cells ran, and the cells that raised (index, error)."""

    namespace: dict[str, Any]
    errors: list[tuple[int, BaseException]] = field(default_factory=list)


def code_cells(path: Path) -> list[str]:
    """The notebook's code cells, without the final `check("exN")` cell."""
    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    sources = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    if sources and CHECK_CELL.match(sources[-1]):
        sources.pop()
    return sources


def _without_magics(source: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


@contextlib.contextmanager
def notebook_folder(folder: Path) -> Iterator[None]:
    """cwd = `folder`, with `folder` and exercises/ first on sys.path; both restored after."""
    previous_cwd, previous_path = os.getcwd(), list(sys.path)
    os.chdir(folder)
    sys.path[:0] = [str(folder), str(EXERCISES)]
    try:
        yield
    finally:
        os.chdir(previous_cwd)
        sys.path[:] = previous_path


def run_cells(path: Path) -> Executed:
    """Execute the code cells (not the check cell) in a fresh namespace, in the current folder."""
    executed = Executed({"__name__": "__main__", "__builtins__": __builtins__})
    for index, source in enumerate(code_cells(path)):
        try:
            code = compile(_without_magics(source), f"<{Path(path).name} cell {index}>", "exec")
            exec(code, executed.namespace)  # noqa: S102
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # noqa: BLE001 - a kernel with allow_errors keeps going, even after
            executed.errors.append((index, error))  # pytest.fail() or SystemExit (BaseExceptions)
    return executed


def grade(path: Path, exercise_id: str) -> list[CheckResult]:
    """Run the notebook at `path` in-process, then every check of `exercise_id` on its namespace."""
    path = Path(path).resolve()
    with notebook_folder(path.parent):
        executed = run_cells(path)
        return exercise(exercise_id).run(executed.namespace)


def execute(path: Path) -> Executed:
    """Run the notebook at `path` in-process (in its folder) and return its namespace and errors."""
    path = Path(path).resolve()
    with notebook_folder(path.parent):
        return run_cells(path)


def score(results: list[CheckResult]) -> tuple[float, float]:
    """(points, max points)."""
    return sum(r.points for r in results), sum(r.max_points for r in results)


@functools.cache
def graded(path: Path, exercise_id: str) -> tuple[CheckResult, ...]:
    """`grade`, run once per notebook: most tests of an exercise read the same results."""
    return tuple(grade(path, exercise_id))


@functools.cache
def clean_namespace(path: Path) -> dict[str, Any]:
    """The namespace of a notebook every cell of which must run without an error (a solution)."""
    executed = execute(path)
    assert not executed.errors, executed.errors
    return executed.namespace


def mutants_of(exercise_id: str) -> tuple[Path, dict[str, str], list[Path]]:
    """An exercise's folder of buggy submissions, each one's expected message fragment, and their
    notebooks in order."""
    folder = MUTANTS / exercise_id
    expected: dict[str, str] = json.loads((folder / "expected.json").read_text())
    return folder, expected, sorted(folder.glob("*.ipynb"))
