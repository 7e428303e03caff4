# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create .venv with pip (pip takes torch from the local wheel cache where one exists).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/ssl-guard: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: demo test
demo: $(BIN)/ssl-guard
	$(BIN)/ssl-guard demo

test: $(BIN)/ssl-guard
	$(BIN)/python -m pytest
