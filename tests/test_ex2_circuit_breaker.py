"""Exercise 2 (a circuit breaker and its test): the solution gets full marks, the untouched
exercise fails every check with its stub's message, every buggy submission in tests/mutants/ex2/
is caught with a message naming its mistake, other correct breakers are not failed, and our own
correct and buggy breakers are what the checks say they are. Notebooks run in-process
(tests/grading_support.py), except one real-kernel run of the solution."""

from __future__ import annotations

import ast
import json
import time
from functools import partial
from typing import Any

import nbformat
import openai
import pytest
from grading_support import (
    EXERCISES,
    SOLUTIONS,
    code_cells,
    execute,
    grade,
    graded as graded_as,
    mutants_of,
    score,
)
from nbclient import NotebookClient

from course_lib.clock import VirtualClock
from course_lib.grading import CheckResult, exercise
from course_lib.grading import ex2_circuit_breaker as ex2

NAME = "ex2_circuit_breaker.ipynb"
EXERCISE, SOLUTION = EXERCISES / NAME, SOLUTIONS / NAME
MUTANT_DIR, EXPECTED, _mutants = mutants_of("ex2")
MUTANT_NAMES = [path.stem for path in _mutants]
BREAKER_CHECKS, TEST_CHECKS = 9, 8  # checks on the learner's breaker, then on the learner's test
FULL_MARKS = 23


graded = partial(graded_as, exercise_id="ex2")


def failed(results: tuple[CheckResult, ...] | list[CheckResult]) -> dict[str, str]:
    return {r.name: r.message for r in results if not r.passed}


def namespace_with(breaker_source: str, test_source: str | None = None) -> dict[str, Any]:
    """A notebook namespace: the setup cell's names, then `breaker_source`, then a test (the
    solution's unless given)."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    setup = code_cells(SOLUTION)[0]
    solution_test = next(code for code in code_cells(SOLUTION) if code.startswith(f"def {ex2.TEST_NAME}"))
    for code in (setup, breaker_source, test_source or solution_test):
        exec(compile(code, "<variant>", "exec"), namespace)  # noqa: S102
    return namespace


def solution_breaker() -> str:
    """The solution's is_provider_failure and CircuitBreaker cells."""
    return "\n\n".join(code for code in code_cells(SOLUTION)
                       if code.startswith(("def is_provider_failure", "class CircuitBreaker")))


# --- the solution and the stub --------------------------------------------------------------------
def test_the_solution_gets_full_marks_quickly() -> None:
    started = time.perf_counter()
    results = grade(SOLUTION, "ex2")
    elapsed = time.perf_counter() - started
    assert failed(results) == {}
    assert score(results) == (FULL_MARKS, FULL_MARKS)
    assert len(results) == BREAKER_CHECKS + TEST_CHECKS
    assert elapsed < 2, f"grading the solution took {elapsed:.2f} s"


def test_every_cell_of_the_solution_runs() -> None:
    assert execute(SOLUTION).errors == []


def test_the_untouched_exercise_fails_every_check_with_its_stubs_message() -> None:
    namespace = execute(EXERCISE).namespace
    with pytest.raises(NotImplementedError) as init_stub:
        namespace["CircuitBreaker"]()
    with pytest.raises(NotImplementedError) as test_stub:
        namespace[ex2.TEST_NAME](ex2._Breaker)
    results = graded(EXERCISE)
    assert score(list(results)) == (0, FULL_MARKS)
    expected = [f"NotImplementedError: {init_stub.value}"] * BREAKER_CHECKS + [
        f"NotImplementedError: {test_stub.value}"] * TEST_CHECKS
    assert [r.message for r in results] == expected
    assert all(not r.passed for r in results)


def test_exercise_and_solution_differ_only_in_the_stub_cells() -> None:
    exercise_cells = json.loads(EXERCISE.read_text())["cells"]
    solution_cells = json.loads(SOLUTION.read_text())["cells"]
    assert [c["cell_type"] for c in exercise_cells] == [c["cell_type"] for c in solution_cells]
    stubs = 0
    for mine, theirs in zip(exercise_cells, solution_cells, strict=True):
        a, b = "".join(mine["source"]), "".join(theirs["source"])
        if "NotImplementedError" in a:
            stubs += 1
            assert top_level_names(a) == top_level_names(b)
        else:
            assert a == b
    assert stubs == 3
    last = [c for c in exercise_cells if c["cell_type"] == "code"][-1]
    assert "".join(last["source"]) == 'check("ex2")'


def top_level_names(source: str) -> set[str]:
    return {node.name for node in ast.parse(source).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def test_the_task_text_states_every_name_the_checks_rely_on() -> None:
    cells = json.loads(EXERCISE.read_text())["cells"]
    task = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    for promise in ["CircuitBreaker(failure_threshold=5, reset_timeout=30.0, clock=time.monotonic)",
                    "call(fn, *args, **kwargs)", '"closed"', '"open"', '"half-open"', "CircuitOpen",
                    f"{ex2.TEST_NAME}(CircuitBreaker)", "provider_error", "client_error", "time.time()",
                    "5xx, 408,\n   409 or 429", "neither counts\n   as a failure nor resets the count",
                    "5 client errors in a row", "course_lib.breaker"]:
        assert promise in task, promise


def test_the_solution_passes_in_a_real_kernel() -> None:
    notebook = nbformat.read(SOLUTION, as_version=4)
    NotebookClient(notebook, timeout=60, resources={"metadata": {"path": str(SOLUTIONS)}}).execute()
    printed = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
    assert f"ex2: {FULL_MARKS}/{FULL_MARKS} points" in printed
    assert "FAIL" not in printed


# --- the mutants ------------------------------------------------------------------------------------
def test_there_are_enough_mutants_and_each_has_an_expected_message() -> None:
    assert len(MUTANT_NAMES) >= 6
    assert sorted(EXPECTED) == MUTANT_NAMES
    assert sum(name.startswith("test_") for name in MUTANT_NAMES) >= 3  # weak tests, not only buggy breakers


@pytest.mark.parametrize("name", MUTANT_NAMES)
def test_each_mutant_changes_one_code_cell_of_the_solution(name: str) -> None:
    solution, mutant = code_cells(SOLUTION), code_cells(MUTANT_DIR / f"{name}.ipynb")
    assert len(solution) == len(mutant)
    assert sum(a != b for a, b in zip(solution, mutant, strict=True)) == 1


@pytest.mark.parametrize("name", MUTANT_NAMES)
def test_each_mutant_is_caught_with_a_message_naming_its_mistake(name: str) -> None:
    results = graded(MUTANT_DIR / f"{name}.ipynb")
    points, most = score(list(results))
    assert points < most
    messages = failed(results).values()
    assert any(EXPECTED[name] in message for message in messages), list(messages)


def test_the_catch_rate_is_100_percent(capsys: pytest.CaptureFixture[str]) -> None:
    caught = [name for name in MUTANT_NAMES
              if any(EXPECTED[name] in m for m in failed(graded(MUTANT_DIR / f"{name}.ipynb")).values())]
    with capsys.disabled():
        print(f"\nex2: {len(caught)}/{len(MUTANT_NAMES)} mutants caught ({len(caught) / len(MUTANT_NAMES):.0%})")
    assert caught == MUTANT_NAMES


# --- our own breakers are what the checks say they are ----------------------------------------------
LEARNER_BREAKER_CHECKS = [c for c in exercise("ex2").checks[:BREAKER_CHECKS]
                          if not c.name.startswith("CircuitBreaker has")]


def test_our_correct_breaker_passes_the_checks_on_a_learners_breaker() -> None:
    namespace = {"CircuitBreaker": ex2._Breaker}  # only the "your own code" check would object
    for item in LEARNER_BREAKER_CHECKS:
        item.run(namespace)


@pytest.mark.parametrize("buggy", [pytest.param(bug, id=what) for bug, what, _ in ex2._BUGGY])
def test_each_of_our_buggy_breakers_fails_a_check_on_a_learners_breaker(buggy: type) -> None:
    namespace = {"CircuitBreaker": buggy}
    failures = []
    for item in LEARNER_BREAKER_CHECKS:
        try:
            item.run(namespace)
        except ex2.CheckFailed as verdict:
            failures.append(str(verdict))
    assert failures


def test_the_buggy_breakers_are_seven_distinct_checks() -> None:
    names = [c.name for c in exercise("ex2").checks[BREAKER_CHECKS:]]
    assert names[0] == "your test passes on a correct breaker"
    assert len(names) == len(set(names)) == 1 + len(ex2._BUGGY) == TEST_CHECKS


# --- other correct answers pass, and a learner's test cannot stall or break the checks -----------------
LOCKED = '''
import threading


class CircuitBreaker:
    """Correct, but holds a lock while the call runs (calls are serialised)."""

    def __init__(self, failure_threshold=5, reset_timeout=30.0, clock=time.monotonic):
        self.limit, self.timeout, self.clock = failure_threshold, reset_timeout, clock
        self.mode, self.failures, self.since, self.lock = "closed", 0, None, threading.Lock()

    @property
    def state(self):
        with self.lock:
            return self._now()

    def _now(self):
        if self.mode == "open" and self.clock() - self.since >= self.timeout:
            return "half-open"
        return self.mode

    def call(self, fn, *args, **kwargs):
        with self.lock:
            mode = self._now()
            if mode == "open":
                raise CircuitOpen("open")
            try:
                result = fn(*args, **kwargs)
            except openai.APIError as error:
                if is_provider_failure(error):
                    self.failures += 1
                    if mode == "half-open" or self.failures >= self.limit:
                        self.mode, self.since, self.failures = "open", self.clock(), 0
                raise
            self.mode, self.failures = "closed", 0
            return result
'''


def test_a_breaker_holding_a_lock_during_the_call_gets_full_marks_without_hanging() -> None:
    provider_rule = next(code for code in code_cells(SOLUTION) if code.startswith("def is_provider_failure"))
    namespace = namespace_with(provider_rule + "\n" + LOCKED)
    started = time.perf_counter()
    results = exercise("ex2").run(namespace)
    assert failed(results) == {}
    assert time.perf_counter() - started < 3


def test_a_state_property_that_moves_to_half_open_itself_gets_full_marks() -> None:
    source = solution_breaker().replace(
        '''            return "half-open"
        return self._state''', '''            self._state = "half-open"
        return self._state''')
    assert source != solution_breaker()
    assert failed(exercise("ex2").run(namespace_with(source))) == {}


def test_a_learner_test_that_sleeps_for_real_is_stopped_at_once() -> None:
    sleepy = f'''def {ex2.TEST_NAME}(CircuitBreaker):
    breaker = CircuitBreaker()
    time.sleep(30)
'''
    real_sleep = time.sleep
    started = time.perf_counter()
    results = exercise("ex2").run(namespace_with(solution_breaker(), sleepy))
    assert time.perf_counter() - started < 2
    assert time.sleep is real_sleep
    assert "your test called time.sleep(30)" in failed(results)["your test passes on a correct breaker"]


def test_a_failing_learner_test_is_reported_with_its_line_even_through_pytest_fail() -> None:
    wrong = f'''def {ex2.TEST_NAME}(CircuitBreaker):
    breaker = CircuitBreaker()
    with pytest.raises(CircuitOpen):
        breaker.call(provider_error)
'''
    results = exercise("ex2").run(namespace_with(solution_breaker(), wrong))
    message = failed(results)["your test passes on a correct breaker"]
    assert message.startswith("your test fails on a correct breaker: ")
    assert message.endswith("(line 4 of your test)")  # the call inside pytest.raises raised a 503
    assert all("must first pass on a correct breaker" in m for name, m in failed(results).items()
               if name.startswith("your test catches"))


def test_the_time_functions_are_restored_after_the_checks() -> None:
    originals = (time.time, time.monotonic, time.sleep)
    grade(MUTANT_DIR / "wall_clock.ipynb", "ex2")  # a fresh run, not the cached one
    assert (time.time, time.monotonic, time.sleep) == originals


def test_a_breaker_reading_the_wall_clock_through_a_from_import_still_fails() -> None:
    source = solution_breaker().replace("self.clock()", "wall()")
    namespace = namespace_with("from time import time as wall\n" + source)
    message = failed(exercise("ex2").run(namespace))["after reset_timeout it goes half-open and lets ONE probe through"]
    assert "30 s after opening (reset_timeout) the state is 'open'" in message


# --- the helpers the notebook imports --------------------------------------------------------------
def test_provider_error_raises_a_503_and_client_error_a_400_whatever_their_arguments() -> None:
    with pytest.raises(openai.InternalServerError) as server:
        ex2.provider_error("any", argument=1)
    with pytest.raises(openai.BadRequestError) as client:
        ex2.client_error({"role": "user"})
    assert (server.value.status_code, client.value.status_code) == (503, 400)
    assert server.value.body["type"] == "server_error"  # type: ignore[index]
    with pytest.raises(openai.InternalServerError) as again:
        ex2.provider_error()
    assert again.value is not server.value


def test_our_breaker_works_on_a_virtual_clock_as_the_task_describes() -> None:
    clock = VirtualClock()
    breaker = ex2._Breaker(failure_threshold=2, reset_timeout=10, clock=clock.now)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            breaker.call(ex2.provider_error)
    with pytest.raises(ex2.CircuitOpen, match="next probe in 10.0 s"):
        breaker.call(ex2.provider_error)
    clock.sleep(10)
    assert breaker.state == "half-open"
    assert breaker.call(lambda: "back") == "back"
    assert breaker.state == "closed"
