"""Render executed notebooks to static HTML, charts included, with an index page.

    python tools/build_site.py build/executed build/site

Refuses (exit 1) when a notebook's page carries another number of charts than its
`metadata.workbook.charts` says, so a site with a missing chart is never published.
"""

from __future__ import annotations

import html
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter


def title_of(notebook: nbformat.NotebookNode, fallback: str) -> str:
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            return cell.source.splitlines()[0][2:].strip()
    return fallback


def main(executed: Path, site: Path) -> int:
    site.mkdir(parents=True, exist_ok=True)
    exporter, entries, problems = HTMLExporter(), [], []
    for path in sorted(executed.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        body, _ = exporter.from_notebook_node(notebook)
        charts = body.count('src="data:image/png;base64,')
        expected = notebook.metadata.get("workbook", {}).get("charts", 0)
        if charts != expected:
            problems.append(f"{path.name}: {charts} chart(s) on the page, {expected} expected")
        (site / f"{path.stem}.html").write_text(body, encoding="utf-8")
        entries.append(f'<li><a href="{path.stem}.html">{html.escape(title_of(notebook, path.stem))}</a>'
                       f" ({charts} charts)</li>")
        print(f"{path.stem}.html: {charts} chart(s)")
    index = ("<!doctype html><meta charset='utf-8'><title>Hardening LLM applications</title>"
             "<h1>Hardening LLM applications: the workbook, executed</h1><ul>" + "".join(entries) + "</ul>")
    (site / "index.html").write_text(index, encoding="utf-8")
    for problem in problems:
        print("build_site:", problem, file=sys.stderr)
    return 1 if problems or not entries else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
