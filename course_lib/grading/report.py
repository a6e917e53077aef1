"""What `course-lib grade` writes: the grade table (CSV), the readable report (markdown) and the
one-line summary it prints.

CSV: one row per student, sorted by name; columns `student`, then for each exercise in order
`exN_points` and `exN_max`, then `total` and `total_max`. Numbers are written plainly ("3",
"2.5"), so the file compares exactly with an expected one.

Report: a table of points per student and exercise, then one section per student listing each
failed check with its message, and for an exercise that scored 0 for a reason (missing notebook,
timeout, dead kernel, too much output...) that reason instead of its checks.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .grader import GradeRun

__all__ = ["csv_header", "csv_rows", "markdown", "number", "summary", "write_csv", "write_report"]


def number(value: float) -> str:
    """Points as a person writes them: 3, 2.5, 0.33 (at most two decimals)."""
    return f"{round(value, 2):g}"


def csv_header(run: GradeRun) -> list[str]:
    columns = ["student"]
    for ex in run.exercises:
        columns += [f"{ex.id}_points", f"{ex.id}_max"]
    return columns + ["total", "total_max"]


def csv_rows(run: GradeRun) -> list[list[str]]:
    """The CSV's rows after the header: one per student, sorted."""
    rows = []
    for student in run.students:
        row = [student]
        for ex in run.exercises:
            result = run.grade_of(student, ex.id)
            row += [number(result.points), number(result.max_points)]
        row += [number(run.total(student)), number(run.max_total)]
        rows.append(row)
    return rows


def write_csv(run: GradeRun, path: Path) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(csv_header(run))
        writer.writerows(csv_rows(run))


def _one_line(text: str, limit: int = 500) -> str:
    """A message as one markdown line: the report must stay readable whatever a check said."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def markdown(run: GradeRun) -> str:
    """The readable report: the points table, then each student's failed checks and reasons."""
    ids = [ex.id for ex in run.exercises]
    lines = ["# Grades", "", run.describe() + ".", ""]
    if run.timing():
        lines += [run.timing().capitalize() + ".", ""]
    lines += ["| student | " + " | ".join(ids) + " | total |", "|---|" + "---:|" * (len(ids) + 1)]
    for student in run.students:
        cells = [f"{number(run.grade_of(student, i).points)}/{number(run.grade_of(student, i).max_points)}"
                 for i in ids]
        lines.append(f"| {student} | " + " | ".join(cells) + f" | {number(run.total(student))}/{number(run.max_total)} |")
    for student in run.students:
        lines += ["", f"## {student}: {number(run.total(student))}/{number(run.max_total)}", ""]
        problems = []
        for ex in run.exercises:
            result = run.grade_of(student, ex.id)
            if result.points == result.max_points and not result.reason:
                continue
            head = f"- **{ex.id}** ({ex.title}), {number(result.points)}/{number(result.max_points)}"
            if result.reason:
                problems.append(f"{head}: {_one_line(result.reason)}")
                continue
            problems.append(f"{head}:")
            problems += [f"  - {check.name} (0/{number(check.max_points)}): {_one_line(check.message)}"
                         for check in result.checks if not check.passed]
        lines += problems or ["All checks passed."]
    return "\n".join(lines) + "\n"


def write_report(run: GradeRun, path: Path) -> None:
    Path(path).write_text(markdown(run), encoding="utf-8")


def summary(run: GradeRun, outputs: Sequence[Path] = ()) -> str:
    """The line `course-lib grade` prints: what was graded, the wall time and the time per notebook."""
    zeroed = sum(1 for result in run.grades.values() if result.reason)
    written = f"; wrote {', '.join(str(path) for path in outputs)}" if outputs else ""
    reasons = f"; {zeroed} scored 0 for a reason (see the report)" if zeroed else ""
    return run.describe() + reasons + written
