"""The README's Python example runs as written (against the simulated provider)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_answers_from_the_primary_model(monkeypatch) -> None:
    monkeypatch.delenv("COURSE_LIB_REAL_LLM", raising=False)
    [example] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    answer = namespace["answer"]
    assert (answer.handler, answer.degraded) == ("gpt-4o", False)
    assert answer.value


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.read_text().split("```")[1]
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()[1:]] == ["make lab", "make test"]
