# Two entry points: `make demo` runs the main job offline; `make check` runs lint, types and tests.
# Both create .venv and install the project into it on first use (and when pyproject.toml changes):
# the demo only the package (what the offline recipe imports), the checks every extra and dev tool.
# One marker file per install: dev is a superset of the demo's, so installing it marks both.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CHAINKIT_DATA_DIR ?= ../shared/data

.PHONY: demo check test lint types bench notebooks

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed-demo $@

demo: $(VENV)/.installed-demo
	$(PY) -m recipes.chatbot

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

types: $(VENV)/.installed-dev
	$(PY) -m mypy

test: $(VENV)/.installed-dev
	$(PY) -m pytest

check: lint types test

# Runs both notebooks on the real data and saves them with their outputs (tables, plots).
notebooks: $(VENV)/.installed-dev
	CHAINKIT_DATA_DIR=$(CHAINKIT_DATA_DIR) $(PY) scripts/render_notebooks.py notebooks/*.ipynb
