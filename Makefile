# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
# CPU wheel by default (already on disk here). On a GPU machine, e.g.:
#   make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-slow lint demo data bench-data clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

lint: venv
	$(BIN)/ruff check src scripts tests

data: venv
	$(BIN)/python scripts/make_synthetic.py

bench-data: venv
	$(BIN)/python scripts/bench_data.py

demo: venv
	$(BIN)/python scripts/make_synthetic.py out_dir=checkpoints/demo/data n_customers=20000
	$(BIN)/python scripts/prepare.py data.data_dir=checkpoints/demo/data hydra.run.dir=checkpoints/demo/prepare

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
