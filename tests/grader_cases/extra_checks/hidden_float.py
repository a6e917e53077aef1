"""An instructor's private check on top of the fixture exercises (`--extra-checks` takes one
folder, so this one loads the fixture exercises first)."""

from pathlib import Path

from course_lib.grading import EXERCISES, CheckFailed, load_extra_checks

load_extra_checks(Path(__file__).resolve().parents[1] / "checks")


@EXERCISES["fx1"].check("double(1.5) is 3.0 (instructor's check)", points=1)
def doubles_floats(ns):
    got = ns["double"](1.5)
    if got != 3.0:
        raise CheckFailed(f"double(1.5) returned {got!r}; a number need not be whole")
