"""Grade a generated class end to end and check the grade table exactly.

    python tools/grade_class.py [--students 30] [--timeout 30] [--jobs N] [--keep DIR]

Builds a class of N students from the course's own notebooks: the reference solutions, the
untouched exercises (stubs), the buggy submissions of tests/mutants/exN/, one student whose
notebook hangs (a solution with an endless loop before its check cell) and one whose kernel
crashes (a solution that dereferences a null pointer). The expected CSV is computed without the
grader: a solution scores full marks, a stub 0, a mutant what its checks give when its cells run
in this process (tests/grading_support.py), a hang or a crash 0. Then `course-lib grade` grades
the class, its CSV is compared with the expected one exactly, and the wall time and the time per
notebook are printed. Exit status 1 when the CSVs differ.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
EXERCISES, SOLUTIONS, MUTANTS = ROOT / "exercises", ROOT / "solutions", ROOT / "tests" / "mutants"
HANG = "while True:  # grade_class: this submission never finishes\n    pass"
CRASH = "import ctypes  # grade_class: this submission kills its kernel\nctypes.string_at(0)"


@dataclass(frozen=True)
class Submission:
    """What one student handed in for one exercise: `kind` is solution, stub, mutant, hang or crash."""

    kind: str
    source: Path
    extra_cell: str | None = None


def exercise_notebooks() -> dict[str, str]:
    """{"ex1": "ex1_retry.ipynb", ...} from the exercise notebooks' names."""
    return {path.name.split("_")[0]: path.name for path in sorted(EXERCISES.glob("ex*.ipynb"))}


def mutants_of(exercise_id: str) -> list[Path]:
    expected = json.loads((MUTANTS / exercise_id / "expected.json").read_text())
    return [MUTANTS / exercise_id / f"{stem}.ipynb" for stem in sorted(expected)]


def build_class(size: int, notebooks: dict[str, str], seed: int) -> dict[str, dict[str, Submission]]:
    """Students s01..sNN: the first hands in every solution, the second every stub, the third a
    hang, the fourth a crash (their other notebooks are solutions), the rest a shuffled mix of
    every mutant, with a solution or a stub now and then."""
    rng = random.Random(seed)
    pools = {}
    for ex_id, name in notebooks.items():
        pool = [Submission("mutant", path) for path in mutants_of(ex_id)]
        pool += [Submission("solution", SOLUTIONS / name), Submission("stub", EXERCISES / name)]
        rng.shuffle(pool)
        pools[ex_id] = pool
    ids = list(notebooks)
    hang_ex, crash_ex = ids[0], ids[min(1, len(ids) - 1)]
    students: dict[str, dict[str, Submission]] = {}
    for index in range(size):
        name = f"s{index + 1:02d}"
        solutions = {ex_id: Submission("solution", SOLUTIONS / notebooks[ex_id]) for ex_id in ids}
        if index == 0:
            students[name] = solutions
        elif index == 1:
            students[name] = {ex_id: Submission("stub", EXERCISES / notebooks[ex_id]) for ex_id in ids}
        elif index == 2:
            students[name] = {**solutions, hang_ex: Submission("hang", SOLUTIONS / notebooks[hang_ex], HANG)}
        elif index == 3:
            students[name] = {**solutions, crash_ex: Submission("crash", SOLUTIONS / notebooks[crash_ex], CRASH)}
        else:
            students[name] = {ex_id: pools[ex_id][(index - 4) % len(pools[ex_id])] for ex_id in ids}
    return students


def write_class(folder: Path, students: dict[str, dict[str, Submission]], notebooks: dict[str, str]) -> None:
    for student, submissions in students.items():
        (folder / student).mkdir(parents=True)
        for ex_id, submission in submissions.items():
            target = folder / student / notebooks[ex_id]
            if submission.extra_cell is None:
                shutil.copyfile(submission.source, target)
                continue
            notebook = nbformat.read(submission.source, as_version=4)
            notebook.cells.insert(len(notebook.cells) - 1, nbformat.v4.new_code_cell(submission.extra_cell))
            nbformat.write(notebook, target)


def expected_points(submission: Submission, exercise_id: str, cache: dict[Path, float]) -> float:
    """Independently of the grader: full marks, 0, or a mutant's points from an in-process run."""
    from course_lib.grading import exercise

    if submission.kind == "solution":
        return exercise(exercise_id).max_points
    if submission.kind != "mutant":
        return 0.0
    if submission.source not in cache:
        sys.path.insert(0, str(ROOT / "tests"))
        import grading_support

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            results = grading_support.grade(submission.source, exercise_id)
        cache[submission.source] = sum(result.points for result in results)
    return cache[submission.source]


def number(value: float) -> str:
    return f"{round(value, 2):g}"


def expected_csv(students: dict[str, dict[str, Submission]], ids: list[str]) -> str:
    from course_lib.grading import exercise

    maxima = {ex_id: exercise(ex_id).max_points for ex_id in ids}
    cache: dict[Path, float] = {}
    lines = ["student," + ",".join(f"{ex_id}_points,{ex_id}_max" for ex_id in ids) + ",total,total_max"]
    for student in sorted(students):
        points = {ex_id: expected_points(students[student][ex_id], ex_id, cache) for ex_id in ids}
        cells = [f"{number(points[ex_id])},{number(maxima[ex_id])}" for ex_id in ids]
        lines.append(f"{student},{','.join(cells)},{number(sum(points.values()))},{number(sum(maxima.values()))}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=30, help="course-lib grade --timeout (the hang costs it)")
    parser.add_argument("--jobs", type=int, default=None, help="course-lib grade --jobs (default: the CPU count)")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--keep", type=Path, help="write the class, the CSVs and the report here and keep them")
    args = parser.parse_args(argv)
    if args.students < 4:
        parser.error("--students must be at least 4 (a solution, a stub, a hang and a crash)")

    notebooks = exercise_notebooks()
    ids = list(notebooks)
    students = build_class(args.students, notebooks, args.seed)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="grade-class-"))
    try:
        if (folder / "class").exists():
            shutil.rmtree(folder / "class")
        write_class(folder / "class", students, notebooks)
        kinds = [submission.kind for work in students.values() for submission in work.values()]
        print(f"class of {args.students}: " + ", ".join(f"{kinds.count(k)} {k}" for k in
                                                        ("solution", "stub", "mutant", "hang", "crash")))
        started = time.perf_counter()
        expected = expected_csv(students, ids)
        print(f"expected CSV computed in-process in {time.perf_counter() - started:.1f} s")
        (folder / "expected.csv").write_text(expected)

        command = [sys.executable, "-m", "course_lib.cli", "grade", str(folder / "class"), "--out",
                   str(folder / "grades.csv"), "--report", str(folder / "grades.md"), "--exercises", str(EXERCISES),
                   "--timeout", str(args.timeout)] + (["--jobs", str(args.jobs)] if args.jobs else [])
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            print(f"course-lib grade failed ({done.returncode}):\n{done.stdout}{done.stderr}")
            return 1
        print(done.stdout.strip())
        timing = [line for line in (folder / "grades.md").read_text().splitlines() if line.startswith("Time per")]
        print(f"course-lib grade: {wall:.1f} s wall including its own start, {wall / len(kinds):.2f} s per notebook "
              f"({len(kinds)} notebooks, {os.cpu_count()} CPUs). {' '.join(timing)}")
        got = (folder / "grades.csv").read_text().replace("\r\n", "\n")
        if got != expected:
            print("the CSV differs from the expected one:")
            sys.stdout.writelines(difflib.unified_diff(expected.splitlines(True), got.splitlines(True),
                                                       "expected.csv", "grades.csv"))
            return 1
        print(f"the CSV matches the expected one exactly ({args.students} rows)")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
