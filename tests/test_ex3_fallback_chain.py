"""Exercise 3 (a fallback chain): the solution passes, the stub fails every check with its own
message, every buggy submission in tests/mutants/ex3/ is caught with a message naming its mistake,
and other correct answers are not failed. Notebooks run in-process (tests/grading_support.py)."""

from __future__ import annotations

import ast
import contextlib
import json
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
    score,
)

from course_lib.grading import CheckResult, ExerciseIncomplete, check, exercise

NAME = "ex3_fallback_chain.ipynb"
EXERCISE, SOLUTION = EXERCISES / NAME, SOLUTIONS / NAME
MUTANT_DIR, EXPECTED, _mutants = mutants_of("ex3")
MUTANT_NAMES = [path.stem for path in _mutants]


graded = partial(graded_as, exercise_id="ex3")


solution_namespace = partial(clean_namespace, SOLUTION)


def cells(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict[str, Any]) -> str:
    return "".join(cell["source"])


def run_variant(replacements: dict[str, str], extra: str = "") -> list[CheckResult]:
    """The checks against the solution's code with `replacements` applied, plus `extra` code run last;
    a cell that raises (a "try it" cell, say) is skipped, as a notebook run with allow_errors would."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    sources = code_cells(SOLUTION)
    for old, new in replacements.items():
        assert sum(code.count(old) for code in sources) == 1, old
        sources = [code.replace(old, new) for code in sources]
    for code in [*sources, extra]:
        with contextlib.suppress(Exception):
            exec(compile(code, "<variant>", "exec"), namespace)  # noqa: S102
    return exercise("ex3").run(namespace)


def failed(results: list[CheckResult] | tuple[CheckResult, ...]) -> dict[str, str]:
    return {r.name: r.message for r in results if not r.passed}


# --- the solution and the stub --------------------------------------------------------------------
def test_the_solution_gets_full_marks() -> None:
    results = graded(SOLUTION)
    assert failed(results) == {}
    assert score(list(results)) == (14, 14)
    assert len(results) == 8


def test_the_solution_runs_without_errors_and_check_prints_a_line_per_check(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = solution_namespace()
    assert check("ex3", namespace) is None  # prints, raises on failure; nothing to show under the cell
    results = exercise("ex3").run(namespace)
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("PASS")] == [r.line() for r in results]
    assert lines[-1] == "ex3: 14/14 points"


def test_the_untouched_exercise_fails_every_check_with_its_stub_message() -> None:
    executed = execute(EXERCISE)
    with pytest.raises(NotImplementedError) as stub:
        executed.namespace["answer"](None, [])
    results = graded(EXERCISE)
    assert score(list(results)) == (0, 14)
    for result in results:
        assert not result.passed
        assert result.message == f"NotImplementedError: {stub.value}", result.name
    with pytest.raises(ExerciseIncomplete, match="8 of 8 checks failed"):
        check("ex3", executed.namespace)


def test_without_an_answer_function_every_check_says_to_define_it() -> None:
    results = exercise("ex3").run({"STATIC_MESSAGE": "sorry"})
    assert {r.message for r in results} == {"define a function answer(client, messages) that returns a Reply"}


# --- the mutants -----------------------------------------------------------------------------------
def test_there_are_at_least_six_mutants_each_with_an_expected_message() -> None:
    assert len(MUTANT_NAMES) >= 6
    assert sorted(EXPECTED) == MUTANT_NAMES
    assert all(fragment.strip() for fragment in EXPECTED.values())


@pytest.mark.parametrize("name", MUTANT_NAMES)
def test_each_mutant_is_the_solution_with_one_code_cell_changed(name: str) -> None:
    mutant, solution = cells(MUTANT_DIR / f"{name}.ipynb"), cells(SOLUTION)
    assert len(mutant) == len(solution)
    changed = [i for i, (m, s) in enumerate(zip(mutant, solution, strict=True)) if source(m) != source(s)]
    assert len(changed) == 1 and mutant[changed[0]]["cell_type"] == "code"


@pytest.mark.parametrize("name", MUTANT_NAMES)
def test_each_mutant_loses_points_with_a_message_that_names_its_mistake(name: str) -> None:
    results = graded(MUTANT_DIR / f"{name}.ipynb")
    points, maximum = score(list(results))
    assert points < maximum
    messages = failed(results).values()
    assert any(EXPECTED[name] in message for message in messages), list(messages)


def test_the_catch_rate_is_100_percent() -> None:
    caught = []
    for name in MUTANT_NAMES:
        results = graded(MUTANT_DIR / f"{name}.ipynb")
        points, maximum = score(list(results))
        named = any(EXPECTED[name] in message for message in failed(results).values())
        caught.append(points < maximum and named)
        print(f"{name:<28} {points:g}/{maximum:g}  caught={caught[-1]}")
    print(f"ex3 catch rate: {sum(caught)}/{len(caught)} = {sum(caught) / len(caught):.0%}")
    assert all(caught)


# --- other correct answers pass; each rule is checked -----------------------------------------------
def test_other_correct_answers_get_full_marks() -> None:
    assert failed(run_variant({}, "from course_lib.breaker import is_provider_failure as falls_through")) == {}
    short_replies = {"messages=messages)": "messages=messages, max_tokens=12)"}
    assert failed(run_variant(short_replies)) == {}


WRAPPED = "_original = answer\n\n\ndef answer(client, messages):\n    {}\n    return _original(client, messages)"


@pytest.mark.parametrize("code", [
    "import course_lib.fallback\n" + WRAPPED.format("course_lib.fallback.NoAnswer"),
    WRAPPED.format("from course_lib.fallback import FallbackChain"),
    "from course_lib import fallback as library",
])
def test_any_use_of_course_lib_fallback_is_detected(code: str) -> None:
    messages = failed(run_variant({}, code))
    assert list(messages) == ["the chain is your own (course_lib.fallback is not used)"]
    assert "course_lib.fallback" in messages["the chain is your own (course_lib.fallback is not used)"]


def test_an_answer_that_never_asks_gpt4o_is_told_so_by_the_bug_check() -> None:
    messages = failed(run_variant({'CHAIN = ("gpt-4o", "gpt-4o-mini")': 'CHAIN = ("gpt-4o-mini",)'}))
    bug = messages["a bug (a KeyError on the way) is raised, not turned into an answer"]
    assert "never made that call" in bug and "ask gpt-4o first" in bug


def test_a_reply_without_the_three_fields_is_named() -> None:
    messages = failed(run_variant({"return Reply(completion.choices[0].message.content or \"\", model, degraded=False)":
                                   "return completion.choices[0].message.content"}))
    assert "expected a Reply with text, answered_by and degraded" in messages[
        "gpt-4o healthy: it answers, and gpt-4o-mini is not called"]


def test_the_wrong_models_text_is_caught() -> None:
    # gpt-4o's reply starts with this sentence (a reply cut short by max_tokens is accepted), gpt-4o-mini's does not
    messages = failed(run_variant({'completion.choices[0].message.content or ""': '"Thanks for getting in touch."'}))
    assert "healthy" not in " ".join(messages)
    assert "text is not what gpt-4o-mini said" in messages["gpt-4o down (503): gpt-4o-mini answers, not degraded"]


def test_a_400_raised_after_trying_both_models_is_caught() -> None:
    messages = failed(run_variant({"                raise  # a bad request": "                if model != 'gpt-4o-mini':\n"
                                   "                    continue\n                raise  # a bad request"}))
    assert "raised only after 2 requests" in messages["a 400 is raised, not passed down the chain"]


# --- the notebooks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [EXERCISE, SOLUTION], ids=["exercise", "solution"])
def test_notebook_layout(path: Path) -> None:
    notebook = cells(path)
    code = [source(cell) for cell in notebook if cell["cell_type"] == "code"]
    assert CHECK_CELL.match(code[-1]) and code[-1] == 'check("ex3")'
    assert notebook[-1]["cell_type"] == "code"
    for text in code:
        assert len(text.splitlines()) <= 30 and all(len(line) <= 100 for line in text.splitlines())
        ast.parse(text)  # no top-level await: it would not parse as plain Python
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in notebook if cell["cell_type"] == "code")
    assert "course_lib.fallback" not in "".join(code)


def test_the_exercise_is_the_solution_with_two_cells_stubbed() -> None:
    exercise_cells, solution_cells = cells(EXERCISE), cells(SOLUTION)
    assert [c["cell_type"] for c in exercise_cells] == [c["cell_type"] for c in solution_cells]
    stubs = [source(e) for e, s in zip(exercise_cells, solution_cells, strict=True) if source(e) != source(s)]
    assert len(stubs) == 2
    assert all("raise NotImplementedError(" in stub for stub in stubs)
    assert {stub.split("(")[0] for stub in stubs} == {"def falls_through", "def answer"}


def test_the_task_text_names_everything_the_checks_rely_on() -> None:
    task = source(cells(EXERCISE)[0])
    for phrase in ["answer(client, messages)", "`text`", "`answered_by`", "`degraded`", '"gpt-4o"', '"gpt-4o-mini"',
                   '"static"', "STATIC_MESSAGE", "429", "5xx", "timeout", "connection error", "400",
                   "context_length_exceeded", "128,000", "KeyError", "at most once", "course_lib.fallback",
                   "choices[0].message.content", "5-second timeout"]:
        assert phrase in task, phrase


def test_the_checks_run_in_well_under_two_seconds() -> None:
    namespace = solution_namespace()
    exercise("ex3").run(namespace)  # warm: the first SDK client pays for its imports
    started = time.perf_counter()
    results = exercise("ex3").run(namespace)
    assert all(r.passed for r in results)
    assert time.perf_counter() - started < 2.0
