"""Committed notebooks carry no outputs and no execution counts (they are run in CI instead)."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    path
    for folder in ("notebooks", "exercises", "solutions", "tests/mutants", "tests/grader_cases")
    for path in (ROOT / folder).glob("**/*.ipynb")
    if ".ipynb_checkpoints" not in path.parts
)


def test_there_are_notebooks() -> None:
    assert (ROOT / "notebooks" / "01_retry.ipynb") in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    notebook = json.loads(path.read_text())
    dirty = [
        index
        for index, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"
