# Two entry points: `make demo` (install + run the main job) and `make test` (install + run the tests).
# torch==2.13.0 is installed first and on its own: a bare `torch` requirement resolves a multi-GB CUDA
# build on CPU-only machines.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TEST_ARGS ?= -m "not slow and not gpu" -n 2  # keep in step with the README's test command

.PHONY: install demo test lint clean

$(BIN)/plmkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/plmkit

demo: install
	$(BIN)/plmkit transfer

test: install
	$(BIN)/python -m pytest $(TEST_ARGS)

lint: install
	$(BIN)/ruff check plmkit mtl compress tests scripts

clean:
	rm -rf $(VENV) runs .pytest_cache
