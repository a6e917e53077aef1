"""`course-lib grade` on a class of fixture submissions: the CSV exactly, the report's messages,
and the submissions that misbehave (hang, kill their kernel, delete files, print megabytes, leave
processes behind, want 8 GB of memory, a missing or broken notebook) each scoring 0 with its reason.

The exercises are two tiny fixture ones (tests/grader_cases/), registered from an --extra-checks
folder, so these tests do not depend on the course's exercises. Each submission is built in a
temporary folder from the fixture exercise notebook with its stub cell replaced or a cell added.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from course_lib import cli
from course_lib.grading import grader, report
from course_lib.grading.grader import ExerciseInfo, GradeError, grade, problems, scores_from_results

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "tests" / "grader_cases"
EXERCISES, CHECKS, EXTRA = CASES / "exercises", CASES / "checks", CASES / "extra_checks"
TIMEOUT = 3

DOUBLE = "def double(x):\n    return x * 2"
GREET = "def greet(name):\n    return f'{helper.GREETING}, {name}!'"
HEADER = "student,fx1_points,fx1_max,fx2_points,fx2_max,total,total_max"


def notebook(name: str, answer: str | None = None, *, before_check: str | None = None,
             check_cell: bool = True) -> str:
    """The fixture exercise notebook `name` with its stub cell replaced by `answer`, a cell added
    before the check cell, or the check cell removed; as JSON text."""
    nb = nbformat.read(EXERCISES / f"{name}.ipynb", as_version=4)
    if answer is not None:
        nb.cells[2].source = answer
    if before_check is not None:
        nb.cells.insert(3, nbformat.v4.new_code_cell(before_check))
    if not check_cell:
        nb.cells.pop()
    return nbformat.writes(nb)


def build_class(folder: Path, students: dict[str, dict[str, str]]) -> Path:
    for student, files in students.items():
        (folder / student).mkdir(parents=True)
        for file_name, text in files.items():
            (folder / student / file_name).write_text(text)
    return folder


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def read_csv(path: Path) -> str:
    return path.read_text().replace("\r\n", "\n")


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One grading run over the whole fixture class (each misbehaviour costs a few seconds, so
    the tests below share it)."""
    tmp = tmp_path_factory.mktemp("class")
    pid_file = tmp / "left-behind.pid"
    both = {"fx1_double.ipynb": notebook("fx1_double", DOUBLE), "fx2_greet.ipynb": notebook("fx2_greet", GREET)}
    students = {
        "ada": both,
        "bob": {"fx1_double.ipynb": notebook("fx1_double"), "fx2_greet.ipynb": notebook("fx2_greet")},
        "cy": {**both, "fx1_double.ipynb": notebook("fx1_double", DOUBLE, before_check="while True:\n    pass")},
        "dee": {"fx1_double.ipynb": notebook("fx1_double", DOUBLE, before_check="import os\nos._exit(3)"),
                "fx2_greet.ipynb": notebook("fx2_greet", GREET,
                                            before_check="import ctypes\nctypes.string_at(0)")},
        "eve": {**both, "notes.txt": "mine",
                "fx1_double.ipynb": notebook("fx1_double", DOUBLE, before_check=(
                    "import os\nfor name in os.listdir('.'):\n    if os.path.isfile(name):\n        os.remove(name)"))},
        "fay": {**both, "fx1_double.ipynb": notebook("fx1_double", DOUBLE, before_check="print('x' * 2_500_000)")},
        "gus": {"fx1_double.ipynb": notebook("fx1_double", DOUBLE)},
        "hal": {"fx1_double.ipynb": notebook("fx1_double", DOUBLE)[:-40],
                "fx2_greet.ipynb": notebook("fx2_greet", GREET), "helper.py": 'GREETING = "Hi"\n'},
        "ivy": {"fx1_double.ipynb": notebook("fx1_double", "def double(x):\n    return abs(x) * 2"),
                "fx2_greet.ipynb": notebook("fx2_greet", GREET, check_cell=False)},
        "jon": {"fx1_double.ipynb": notebook("fx1_double", DOUBLE, before_check=(
                    f"import subprocess\nchild = subprocess.Popen(['sleep', '300'])\n"
                    f"open({str(pid_file)!r}, 'w').write(str(child.pid))")),
                "fx2_greet.ipynb": notebook("fx2_greet", GREET, before_check="import os\nos.write(1, b'y' * 3_000_000)")},
        "kim": {**both, "fx1_double.ipynb": notebook("fx1_double", DOUBLE, before_check=(
                    "try:\n    hoard = bytearray(8 * 2**30)\nexcept MemoryError:\n    double = None"))},
    }
    submissions = build_class(tmp / "submissions", students)
    before = fingerprint(submissions)
    seen: list[str] = []
    started = time.perf_counter()
    run = grade(submissions, exercises_dir=EXERCISES, extra_checks=CHECKS, timeout=TIMEOUT, jobs=2,
                max_output_mb=1, on_result=lambda result: seen.append(f"{result.student}/{result.exercise.id}"))
    seconds = time.perf_counter() - started
    report.write_csv(run, tmp / "grades.csv")
    return {"run": run, "csv": read_csv(tmp / "grades.csv"), "report": report.markdown(run), "before": before,
            "after": fingerprint(submissions), "pid_file": pid_file, "seen": seen, "seconds": seconds}


EXPECTED_ROWS = (
    "ada,3,3,2,2,5,5",  # the solution: full marks
    "bob,0,3,0,2,0,5",  # the untouched exercise
    "cy,0,3,2,2,2,5",   # fx1 hangs: 0 for fx1 only
    "dee,0,3,0,2,0,5",  # os._exit and a segfault: both kernels die
    "eve,0,3,2,2,2,5",  # fx1 deletes the files of its folder
    "fay,0,3,2,2,2,5",  # fx1 prints 2.5 MB
    "gus,3,3,0,2,3,5",  # no fx2 notebook
    "hal,0,3,2,2,2,5",  # fx1 is broken JSON; fx2 passes with the reference helper.py, not its own
    "ivy,2,3,0,2,2,5",  # one check of fx1 fails; fx2 never runs check()
    "jon,3,3,0,2,3,5",  # fx1 leaves a process behind (killed, not penalised); fx2 writes 3 MB to fd 1
    "kim,0,3,2,2,2,5",  # fx1 cannot have 8 GB (RLIMIT_AS at the default 4096 MB), so its double is None
)


def test_the_csv_has_one_row_per_student_with_each_exercise_points_and_max(graded: dict) -> None:
    assert graded["csv"] == "\n".join((HEADER, *EXPECTED_ROWS)) + "\n"


def test_each_zero_says_why_in_the_report(graded: dict) -> None:
    run = graded["run"]
    reasons = {(student, ex_id): result.reason for (student, ex_id), result in run.grades.items() if result.reason}
    assert reasons.pop(("hal", "fx1")).startswith("fx1_double.ipynb is not valid JSON (")
    assert reasons == {
        ("cy", "fx1"): f"did not finish within {TIMEOUT} s",
        ("dee", "fx1"): "the kernel died (exit code 3)",
        ("dee", "fx2"): "the kernel died (SIGSEGV)",
        ("eve", "fx1"): "deleted files from its folder: fx1_double.ipynb, fx2_greet.ipynb, helper.py, notes.txt",
        ("fay", "fx1"): "printed 2.5 MB, over the 1 MB limit",
        ("gus", "fx2"): "no fx2_greet.ipynb in the submission",
        ("ivy", "fx2"): 'the notebook never ran check("fx2")',
        ("jon", "fx2"): "printed 3.0 MB, over the 1 MB limit",
    }
    text = graded["report"]
    for reason in ("did not finish within 3 s", "the kernel died (SIGSEGV)", "printed 2.5 MB, over the 1 MB limit",
                   "no fx2_greet.ipynb in the submission", "fx1_double.ipynb is not valid JSON"):
        assert reason in text
    assert "| ada | 3/3 | 2/2 | 5/5 |" in text and "| ivy | 2/3 | 0/2 | 2/5 |" in text


def test_the_report_lists_each_failed_check_with_its_message(graded: dict) -> None:
    text = graded["report"]
    bob = text[text.index("## bob: 0/5"):text.index("## cy:")]
    assert bob.splitlines()[2:] == [
        "- **fx1** (Double a number), 0/3:",
        "  - double(2) is 4 (0/2): NotImplementedError: return twice x",
        "  - double(-3) is -6 (0/1): NotImplementedError: return twice x",
        "- **fx2** (Greet someone), 0/2:",
        "  - greet('Ada') uses helper.GREETING (0/2): NotImplementedError: return helper.GREETING + ', ' + name + '!'",
        "",
    ]
    assert "  - double(-3) is -6 (0/1): double(-3) returned 6, expected -6" in text
    assert "  - double(2) is 4 (0/2): TypeError: 'NoneType' object is not callable" in text  # kim
    ada = text[text.index("## ada: 5/5"):text.index("## bob:")]
    assert "All checks passed." in ada


def test_the_submissions_folder_is_never_written(graded: dict) -> None:
    assert graded["after"] == graded["before"]  # eve deleted everything in her copy, hal's helper.py was overwritten


def test_a_process_a_notebook_leaves_behind_is_killed(graded: dict) -> None:
    pid = int(graded["pid_file"].read_text())
    assert _state_of(pid) in (None, "Z")  # gone, or dead and waiting for init to reap it


def test_every_notebook_is_reported_once_and_in_parallel(graded: dict) -> None:
    run = graded["run"]
    assert sorted(graded["seen"]) == sorted(f"{s}/{e}" for s in run.students for e in ("fx1", "fx2"))
    assert run.notebooks_run == 21 and run.jobs == 2  # gus has no fx2 notebook: nothing to run
    assert "11 students x 2 exercises: 21 notebooks run in " in run.describe()
    assert run.timing().startswith("time per notebook on average: copy ")
    assert run.timing().capitalize() + "." in graded["report"]
    # 21 notebooks (one hanging for TIMEOUT s), two at a time; generous for a loaded CI machine
    assert graded["seconds"] < 30


def test_an_instructors_extra_check_adds_points_and_fails_for_one_student(tmp_path: Path) -> None:
    submissions = build_class(tmp_path / "submissions", {
        "ada": {"fx1_double.ipynb": notebook("fx1_double", DOUBLE)},
        "ron": {"fx1_double.ipynb": notebook("fx1_double", "def double(x):\n    return int(x) * 2")},
    })
    plain = grade(submissions, exercises_dir=EXERCISES, extra_checks=CHECKS, timeout=TIMEOUT)
    with_extra = grade(submissions, exercises_dir=EXERCISES, extra_checks=EXTRA, timeout=TIMEOUT)
    assert [row[:3] for row in report.csv_rows(plain)] == [["ada", "3", "3"], ["ron", "3", "3"]]
    assert [row[:3] for row in report.csv_rows(with_extra)] == [["ada", "4", "4"], ["ron", "3", "4"]]
    failed = [c for c in with_extra.grade_of("ron", "fx1").checks if not c.passed]
    assert [(c.name, c.message) for c in failed] == [
        ("double(1.5) is 3.0 (instructor's check)", "double(1.5) returned 2; a number need not be whole")]


def test_the_command_writes_the_csv_and_the_report_and_prints_a_summary(tmp_path: Path) -> None:
    submissions = build_class(tmp_path / "submissions", {"ada": {"fx1_double.ipynb": notebook("fx1_double", DOUBLE),
                                                                 "fx2_greet.ipynb": notebook("fx2_greet")}})
    out = tmp_path / "grades.csv"
    done = subprocess.run([sys.executable, "-m", "course_lib.cli", "grade", str(submissions), "--out", str(out),
                           "--exercises", str(EXERCISES), "--extra-checks", str(CHECKS), "--jobs", "1"],
                          check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert read_csv(out) == f"{HEADER}\nada,3,3,0,2,3,5\n"
    assert "## ada: 3/5" in (tmp_path / "grades.md").read_text()
    line, = done.stdout.splitlines()
    assert line.startswith("1 students x 2 exercises: 2 notebooks run in ")
    assert " s per notebook (" in line and f"wrote {out}, {tmp_path / 'grades.md'}" in line


def test_fresh_kernels_grade_the_same(tmp_path: Path) -> None:
    """The slower way, each kernel a new Python process (the default off Linux), agrees."""
    submissions = build_class(tmp_path / "submissions", {"ada": {
        "fx1_double.ipynb": notebook("fx1_double", DOUBLE),
        "fx2_greet.ipynb": notebook("fx2_greet", GREET, before_check="import os\nos._exit(3)")}})
    run = grade(submissions, exercises_dir=EXERCISES, extra_checks=CHECKS, timeout=TIMEOUT, fresh_kernels=True)
    assert report.csv_rows(run) == [["ada", "3", "3", "0", "2", "3", "5"]]
    assert run.grade_of("ada", "fx2").reason == "the kernel died (exit code 3)"


def test_endless_output_is_stopped_and_a_killed_runner_is_reported(tmp_path: Path) -> None:
    submissions = build_class(tmp_path / "submissions", {"max": {
        "fx1_double.ipynb": notebook("fx1_double", DOUBLE, before_check=(
            "import time\nwhile True:\n    print('x' * 100_000)\n    time.sleep(0.005)")),
        "fx2_greet.ipynb": notebook("fx2_greet", GREET, before_check="import os\nos.kill(os.getppid(), 9)")}})
    started = time.perf_counter()
    run = grade(submissions, exercises_dir=EXERCISES, extra_checks=CHECKS, timeout=20, max_output_mb=0.1)
    assert time.perf_counter() - started < 15  # stopped at 20 times the limit, long before the timeout
    # the kernel sends what a loop prints in 0.2 s as one message: the count stops within one of them
    printed = re.fullmatch(r"printed (\d+\.\d) MB, over the 0\.1 MB limit \(stopped there\)",
                           run.grade_of("max", "fx1").reason)
    assert printed and 2.0 <= float(printed[1]) < 10
    assert run.grade_of("max", "fx2").reason == "its grading process stopped unexpectedly (SIGKILL)"
    assert report.csv_rows(run) == [["max", "0", "3", "0", "2", "0", "5"]]


def test_bad_arguments_stop_the_command_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["grade", str(tmp_path / "nowhere"), "--out", str(tmp_path / "g.csv")]) == 2
    assert "submissions folder" in capsys.readouterr().err and not (tmp_path / "g.csv").exists()
    assert cli.main(["grade", str(tmp_path), "--out", str(tmp_path / "g.csv"), "--timeout", "0"]) == 2
    assert "timeout must be > 0 seconds, got 0" in capsys.readouterr().err
    assert cli.main(["grade", str(tmp_path), "--out", str(tmp_path / "no" / "g.csv")]) == 2
    assert f"cannot write {tmp_path / 'no' / 'g.csv'}: no folder" in capsys.readouterr().err


def test_an_extra_checks_module_that_fails_stops_the_grader(tmp_path: Path) -> None:
    (tmp_path / "fixture_exercises.py").write_text((CHECKS / "fixture_exercises.py").read_text())
    (tmp_path / "zz_broken.py").write_text("raise RuntimeError('a typo in the instructor\\'s checks')\n")
    with pytest.raises(GradeError, match=r"could not load the extra checks in .*: RuntimeError: a typo in the "):
        grade(tmp_path, exercises_dir=EXERCISES, extra_checks=tmp_path)


def test_a_notebook_in_exercises_without_checks_stops_the_grader(tmp_path: Path) -> None:
    (tmp_path / "exercises").mkdir()
    (tmp_path / "exercises" / "fx9_unknown.ipynb").write_text(notebook("fx1_double"))
    with pytest.raises(GradeError, match="no exercise has the notebook.s. fx9_unknown.ipynb"):
        grade(tmp_path, exercises_dir=tmp_path / "exercises", extra_checks=CHECKS)


# The pure parts: reading check()'s results and the job's status.

FX = ExerciseInfo("fx1", "Double a number", "fx1_double.ipynb", (("a", 2.0), ("b", 1.0)))


def line(name: str, passed: bool, points: float = 0, message: str = "", exercise: str = "fx1") -> str:
    return json.dumps({"exercise": exercise, "name": name, "points": points, "max_points": 9, "passed": passed,
                       "message": message})


def test_results_score_each_check_all_or_nothing_and_the_last_report_wins() -> None:
    scores, _ = scores_from_results(FX, [line("a", False, message="first"), "not json", line("b", True, 1),
                                         line("a", True, 100), line("zz", True, 5), line("a", True, 1, exercise="ex9")])
    assert scores is not None
    assert [(s.name, s.points, s.max_points, s.passed) for s in scores] == [("a", 2.0, 2.0, True), ("b", 1.0, 1.0, True)]


def test_missing_or_incomplete_results_score_nothing() -> None:
    assert scores_from_results(FX, []) == (None, 'the notebook never ran check("fx1")')
    assert scores_from_results(FX, [line("a", True)]) == (None, 'check("fx1") reported 1 of its 2 checks')


def test_the_status_of_a_job_gives_the_reasons_for_a_zero() -> None:
    assert problems({"state": "finished", "printed": 1_000_000}, 60, 1_000_000) == []
    assert problems({"state": "timeout", "printed": 12_300_000}, 60, 1_000_000) == [
        "did not finish within 60 s", "printed 12.3 MB, over the 1 MB limit"]
    assert problems({"state": "kernel_died", "detail": "SIGKILL", "printed": 25_000_000, "stopped": True}, 60,
                    1_000_000) == ["printed 25.0 MB, over the 1 MB limit (stopped there)"]
    deleted = [f"f{i}" for i in range(7)]
    assert problems({"state": "finished", "deleted": deleted}, 60, 10) == [
        "deleted files from its folder: f0, f1, f2, f3, f4 ..."]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sessions are found in /proc")
def test_a_session_is_killed_whole(tmp_path: Path) -> None:
    code = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    leader = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(0.3)
    members = [int(p) for p in os.listdir("/proc") if p.isdigit() and _session_of(int(p)) == leader.pid]
    assert len(members) == 2
    grader._kill_session(leader.pid)
    assert leader.wait(5) == -signal.SIGKILL
    time.sleep(0.2)
    assert all(_session_of(pid) != leader.pid for pid in members)


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _state_of(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[0] if fields else None


def _session_of(pid: int) -> int | None:
    """The session of a live process (None when gone or a zombie)."""
    fields = _stat(pid)
    return None if not fields or fields[0] == "Z" else int(fields[3])


def test_isolation_is_described_honestly() -> None:
    for words in ("not a sandbox", "read any file", "network connections", "RLIMIT_AS", "--timeout", "fake its results",
                  "setsid"):
        assert words in grader.ISOLATION
