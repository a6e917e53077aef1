"""Two tiny exercises for tests/test_grader.py, registered the way an instructor adds private
checks (`--extra-checks tests/grader_cases/checks`), so the grader's tests need no real exercise."""

from course_lib.grading import CheckFailed, Exercise

FX1 = Exercise("fx1", "Double a number", "fx1_double.ipynb")
FX2 = Exercise("fx2", "Greet someone", "fx2_greet.ipynb")


def _returns(ns, call, argument, expected):
    got = ns[call](argument)
    if got != expected:
        raise CheckFailed(f"{call}({argument!r}) returned {got!r}, expected {expected!r}")


@FX1.check("double(2) is 4", points=2)
def doubles_two(ns):
    _returns(ns, "double", 2, 4)


@FX1.check("double(-3) is -6", points=1)
def doubles_negatives(ns):
    _returns(ns, "double", -3, -6)


@FX2.check("greet('Ada') uses helper.GREETING", points=2)
def greets(ns):
    _returns(ns, "greet", "Ada", "Hello, Ada!")
