"""The practice exercises' checks (`check("ex1")` in a notebook) and the `course-lib grade`
command that scores a folder of submissions; see `core` for how a check is written."""

from .core import (
           EXERCISES,
           CheckFailed,
           CheckResult,
           Exercise,
           ExerciseIncomplete,
           check,
           exercise,
           load_extra_checks,
)

__all__ = ["EXERCISES", "CheckFailed", "CheckResult", "Exercise", "ExerciseIncomplete", "check", "exercise",
           "load_extra_checks"]
