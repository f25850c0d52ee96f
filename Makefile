# Two entry points: `make demo` runs the main job offline; `make check` runs lint, types and tests.
# Both create .venv and install the project into it on first use (and when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo check test lint types bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m recipes.chatbot

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

types: $(VENV)/.installed
	$(PY) -m mypy

test: $(VENV)/.installed
	$(PY) -m pytest

check: lint types test
