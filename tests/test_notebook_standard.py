"""The notebook standard (CONTRIBUTING.md), checked on every notebook in `notebooks/`.

Static checks read the committed notebook; the chart check reads the copy that `make test` has
just executed under nbmake with the kernel's inline backend (or executes one itself when run on
its own), so a chart that fails to render fails here.
"""

from __future__ import annotations

import ast
import io
import json
import pkgutil
import re
import symtable
import tokenize
from pathlib import Path

import pytest

import course_lib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_CELL_LINES, MAX_LINE = 30, 100

# The notebook that teaches each pattern module; it may use the module only from its graduation
# section on, later notebooks anywhere. Infrastructure is usable everywhere.
TAUGHT_IN = {"retry": 1, "breaker": 2, "breaker_redis": 2, "fallback": 3, "input_validation": 4, "screening": 4,
             "redaction": 5, "output_validation": 5, "budget": 6, "ratelimit": 6, "pacing": 6, "service": 6,
             "logs": 9, "health": 8, "timeouts": 7}
INFRASTRUCTURE = {"clock", "events", "llm", "sim", "plots", "cli", "_wrapping", "grading"}
EARLY_USE = "# used before graduation:"  # a cell that needs a module early says why after this
SECTIONS = ["the failure", "step by step", "watch it", "mistake", "graduate to", "try it", "takeaways"]
HTTP_STATUSES = {200, 400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504}


def cells(path: Path, kind: str) -> list[tuple[int, str]]:
    notebook = json.loads(path.read_text())
    return [(i, "".join(c["source"])) for i, c in enumerate(notebook["cells"]) if c["cell_type"] == kind]


def ids(path: Path) -> str:
    return path.stem


def graduation_index(path: Path) -> int:
    for i, text in cells(path, "markdown"):
        if re.search(r"^#+ .*graduate to", text, re.I | re.M):
            return i
    raise AssertionError(f"{path.name}: no 'Graduate to course_lib' heading")


def test_every_course_lib_module_is_classified_as_a_pattern_or_infrastructure() -> None:
    modules = {m.name for m in pkgutil.iter_modules(course_lib.__path__)}
    assert modules == TAUGHT_IN.keys() | INFRASTRUCTURE, "add the new module to TAUGHT_IN or INFRASTRUCTURE"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_code_cells_are_short_and_lines_fit_a_pane(path: Path) -> None:
    problems = []
    for i, source in cells(path, "code"):
        lines = source.splitlines()
        if len(lines) > MAX_CELL_LINES:
            problems.append(f"cell {i}: {len(lines)} lines (at most {MAX_CELL_LINES})")
        problems += [f"cell {i}: a line of {len(line)} characters (at most {MAX_LINE}): {line[:40]}..."
                     for line in lines if len(line) > MAX_LINE]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_sections_come_in_the_workbooks_order(path: Path) -> None:
    headings = [line.lower() for _, text in cells(path, "markdown") for line in text.splitlines() if line.startswith("#")]
    found = [next((n for n, h in enumerate(headings) if section in h), None) for section in SECTIONS]
    assert None not in found, f"missing sections: {[s for s, n in zip(SECTIONS, found) if n is None]}"
    assert found == sorted(found), f"sections out of order: {headings}"


def course_lib_imports(source: str) -> set[str]:
    """Top-level course_lib modules a cell imports (course_lib.sim.faults -> sim)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("course_lib."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("course_lib.")}
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_the_library_appears_only_once_the_notebook_has_built_the_pattern(path: Path) -> None:
    number, graduation = int(path.name[:2]), graduation_index(path)
    early = []
    for i, source in cells(path, "code"):
        if i > graduation or EARLY_USE in source:
            continue
        early += [f"cell {i}: course_lib.{m}" for m in course_lib_imports(source)
                  if m not in INFRASTRUCTURE and TAUGHT_IN[m] >= number]
    assert not early, f"used before the graduation section (cell {graduation}) without '{EARLY_USE} <why>': {early}"


def top_level_await(source: str) -> bool:
    try:
        compile(source, "<cell>", "exec")
    except SyntaxError as error:
        return "outside" in str(error) and ("await" in str(error) or "async" in str(error))
    return False


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_the_first_top_level_await_is_marked_as_a_jupyter_feature(path: Path) -> None:
    notebook = json.loads(path.read_text())["cells"]
    first = next((i for i, c in enumerate(notebook) if c["cell_type"] == "code" and top_level_await("".join(c["source"]))), None)
    if first is None:
        return
    around = "".join(notebook[first]["source"]) + "".join(notebook[first - 1]["source"])
    assert re.search(r"top-level `?await`?", around, re.I), f"cell {first} (or the one before) must say top-level await is a Jupyter feature"


def global_bindings(source: str) -> set[str]:
    table = symtable.symtable(source, "<cell>", "exec")
    return {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}


COMPREHENSIONS = {"listcomp", "setcomp", "dictcomp", "genexpr"}  # they run where they are written


def globals_read_by_functions(source: str) -> set[str]:
    """Names that functions (and methods, lambdas) defined in the cell read from the globals."""
    read: set[str] = set()

    def visit(table: symtable.SymbolTable) -> None:
        for child in table.get_children():
            if child.get_type() != "class" and child.get_name() not in COMPREHENSIONS:
                read.update(s.get_name() for s in child.get_symbols() if s.is_global() and s.is_referenced())
            visit(child)

    visit(symtable.symtable(source, "<cell>", "exec"))
    return read


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_no_function_reads_a_global_that_another_cell_binds_again(path: Path) -> None:
    code = cells(path, "code")
    bound_in: dict[str, list[int]] = {}
    for i, source in code:
        for name in global_bindings(source):
            bound_in.setdefault(name, []).append(i)
    problems = [f"cell {i}: a function reads '{name}', bound in cells {bound_in[name]}"
                for i, source in code for name in sorted(globals_read_by_functions(source))
                if len(bound_in.get(name, [])) > 1]
    assert not problems, "pass these as arguments instead:\n" + "\n".join(problems)


NUMBER = re.compile(r"(?<![A-Za-z]-)(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(%|x\b)?(?![\w-]*[A-Za-z])")


def quoted_numbers(markdown: str) -> set[tuple[str, float]]:
    """Numbers in prose, except headings, references to sections, steps and notebooks, and the
    suggestions under "Try it" (values for the reader to type, not results)."""
    found, suggesting = set(), False
    for line in markdown.splitlines():
        if line.startswith("#"):
            suggesting = "try it" in line.lower()
            continue
        if suggesting:
            continue
        line = re.sub(r"\b(sections?|steps?|notebooks?|cells?)\s+\d+[a-z]?((,| and| or)\s+\d+[a-z]?)*", "", line, flags=re.I)
        for match in NUMBER.finditer(line):
            value = float(match.group(1).replace(",", ""))
            if value not in HTTP_STATUSES:
                found.add((match.group(0), value / 100 if match.group(2) == "%" else value))
    return found


def code_numbers(source: str) -> set[float]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {float(eval(t.string)) for t in tokens if t.type == tokenize.NUMBER and "j" not in t.string}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_every_number_the_text_quotes_appears_in_code(path: Path) -> None:
    in_code = set().union(*(code_numbers(source) for _, source in cells(path, "code")))
    missing = sorted({f"cell {i}: {text}" for i, markdown in cells(path, "markdown")
                      for text, value in quoted_numbers(markdown)
                      if not any(abs(value - v) <= 1e-9 * max(1, abs(v)) or (text.endswith("%") and abs(value * 100 - v) <= 1e-9 * max(1, abs(v)))
                                 for v in in_code)})
    assert not missing, "compute these in a code cell and assert them there (or show the input that sets them):\n" + "\n".join(missing)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_each_chart_renders_under_the_inline_backend(path: Path, executed_notebook) -> None:
    expected = json.loads(path.read_text())["metadata"].get("workbook", {}).get("charts")
    assert isinstance(expected, int), f"{path.name}: set metadata.workbook.charts to the number of charts it draws"
    outputs = [o for c in executed_notebook(path)["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images == expected, f"{path.name}: {images} chart(s) rendered, metadata.workbook.charts says {expected}"
