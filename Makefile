# One command sets up and runs the main job (`make demo`); one sets up and runs the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= $(or $(CRYSTALTWINS_DATA),../shared/data)
REFERENCE ?= $(or $(CRYSTALTWINS_REFERENCE),../shared/reference/crystal_twins)
DEMO_OUT ?= runs/demo
# e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" where plain PyPI would
# give the CUDA build
TORCH_PIP_ARGS ?=

.PHONY: venv test demo lint bench-data clean

$(BIN)/crystaltwins: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first, or pip pulls a CUDA build of several GB.
	$(BIN)/python -m pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/crystaltwins

test: venv
	CRYSTALTWINS_DATA=$(DATA) CRYSTALTWINS_REFERENCE=$(REFERENCE) $(BIN)/python -m pytest -q


demo: venv
	CRYSTALTWINS_DATA=$(DATA) $(BIN)/python -m crystaltwins.demo --out $(DEMO_OUT)

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench-data: venv
	$(BIN)/python benchmarks/bench_data.py --data-root $(DATA) --reference $(REFERENCE)

clean:
	# never runs/: it holds the user's runs
	rm -rf $(VENV) build *.egg-info src/*.egg-info
