# `make lab` to work through the notebooks, `make test` to run everything CI runs.
# Both create .venv on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
EXECUTED := build/executed

.PHONY: lab test site bench soak clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --editable ".[dev]"
	touch $(INSTALLED)

# JupyterLab refuses to start as root (containers, CI machines) unless told it may.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

# Notebooks run under the kernel's own inline backend, so their charts are real images that the
# tests count; nbmake executes copies (--overwrite keeps their outputs) and leaves the committed
# notebooks clean. The exercises' reference solutions run too (beside the starter agent they
# import), each passing all its checks.
unexport MPLBACKEND
COPY_NOTEBOOKS = rm -rf $(EXECUTED) && mkdir -p $(EXECUTED)/solutions && cp notebooks/*.ipynb $(EXECUTED)/ \
	&& cp solutions/*.ipynb exercises/starter_agent.py $(EXECUTED)/solutions/

lab: $(INSTALLED)
	$(VENV)/bin/jupyter lab notebooks/ $(ROOT_FLAG)

test: $(INSTALLED)
	$(COPY_NOTEBOOKS)
	$(PY) -m pytest --nbmake --overwrite $(EXECUTED) tests

# Static HTML of every executed notebook, charts included: build/site/index.html.
site: $(INSTALLED)
	rm -rf build/site && $(COPY_NOTEBOOKS)
	$(PY) -m pytest -q --nbmake --overwrite $(EXECUTED)
	$(PY) tools/build_site.py $(EXECUTED) build/site

# Quick by default (CI runs it so); `make bench BENCH_SECONDS=5 BENCH_MB=1 BENCH_DECISIONS=5000`
# for the full-size figures.
BENCH_SECONDS ?= 0.4
BENCH_MB ?= 0.01
BENCH_DECISIONS ?= 200

bench: $(INSTALLED)
	$(PY) bench/bench_retry.py
	$(PY) bench/bench_breaker.py
	$(PY) bench/bench_sim_server.py --seconds $(BENCH_SECONDS)
	$(PY) bench/bench_redaction.py --size $(BENCH_MB)
	$(PY) bench/bench_ratelimit.py --decisions $(BENCH_DECISIONS)
	$(PY) bench/bench_service.py --seconds $(BENCH_SECONDS)

# Many processes against one real redis-server (started on a free port): 0 admissions over a
# rate limit in any window, 0 cents over a budget. `make soak SOAK_REQUESTS=100000` for full size.
SOAK_REQUESTS ?= 4000
SOAK_OPERATIONS ?= 100

soak: $(INSTALLED)
	$(PY) tools/soak_ratelimit.py --requests $(SOAK_REQUESTS)
	$(PY) tools/soak_budget.py --operations $(SOAK_OPERATIONS)

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis

# A generated class (solutions, stubs, mutants, a hang, a crash) graded by `course-lib grade`,
# its CSV checked exactly against one computed without the grader; `make grade-demo CLASS_SIZE=30`
# for the full size (the default is small enough for CI).
CLASS_SIZE ?= 6

.PHONY: grade-demo
grade-demo: $(INSTALLED)
	$(PY) tools/grade_class.py --students $(CLASS_SIZE)
