# `make lab` to work through the notebooks, `make test` to run everything CI runs.
# Both create .venv on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: lab test bench clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --editable ".[dev]"
	touch $(INSTALLED)

# JupyterLab refuses to start as root (containers, CI machines) unless told it may.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(INSTALLED)
	$(VENV)/bin/jupyter lab notebooks/ $(ROOT_FLAG)

test: $(INSTALLED)
	MPLBACKEND=Agg $(PY) -m pytest --nbmake tests notebooks

bench: $(INSTALLED)
	$(PY) bench/bench_retry.py
	$(PY) bench/bench_breaker.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
