# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
# CPU wheel by default (already on disk here). On a GPU machine, e.g.:
#   make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Extras the checkout's venv gets: the tests, plus the optional parts they exercise (trackers, submitit sweeps,
# Ed25519 signing, ALS recommendations, the scoring service, scoring on Ray).
EXTRAS ?= test,mlflow,wandb,cluster,signing,recommend,serve,distributed
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-slow test-gpu gpu-wheels lint demo data wheel bench-data bench-score bench-lifestream clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

# The CUDA checks (tests marked gpu; they skip without a device). Install a CUDA torch via TORCH_SPEC/TORCH_INDEX.
test-gpu: venv
	$(BIN)/python -m pytest -q -m gpu tests/runtime/test_gpu.py

lint: venv
	$(BIN)/ruff check src scripts tests
	$(BIN)/python scripts/check_imports.py

data: venv
	$(BIN)/churnwatch make-synthetic

# The wheel (configs inside, the `churnwatch` command) into dist/: `pip install dist/churnwatch-*.whl`.
wheel: venv
	$(BIN)/python -m pip wheel -q --no-deps -w dist .

bench-data: venv
	$(BIN)/python scripts/bench_data.py

# Scoring throughput and peak RSS with the demo's model, 1M vs 4M customers (run `make demo` first).
bench-score: venv
	$(BIN)/python scripts/bench_score.py --model checkpoints/demo/model.pt --customers 1000000 4000000 \
		--drivers off --as-of 2025-01-01 --precision bf16

# Side by side with pytorch-lifestream (ptls), in its own venv: same data and model sizes, epoch time and
# test AUROC (BENCH_ARGS, e.g. "--customers 100000 --epochs 4"). ptls pins spacy==3.7.4, which would
# downgrade numpy to 1.x: it goes in with --no-deps, plus transformers (ptls.nn imports it).
PTLS_VENV ?= .venv-ptls
PTLS_STAMP := $(PTLS_VENV)/.installed
BENCH_ARGS ?=

$(PTLS_STAMP): pyproject.toml Makefile
	test -x $(PTLS_VENV)/bin/python || $(PYTHON) -m venv $(PTLS_VENV)
	$(PTLS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PTLS_VENV)/bin/python -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PTLS_VENV)/bin/python -m pip install -q -e .
	$(PTLS_VENV)/bin/python -m pip install -q --no-deps "pytorch-lifestream==0.7.0"
	$(PTLS_VENV)/bin/python -m pip install -q transformers
	touch $(PTLS_STAMP)

bench-lifestream: $(PTLS_STAMP)
	$(PTLS_VENV)/bin/python scripts/bench_lifestream.py $(BENCH_ARGS)

# Synthetic data (20k customers) → train the default LSTM (→ export, report.html) → score the latest snapshot,
# all into checkpoints/demo/ (metrics.json, model.pt, report.html, scores.parquet with tier/driver/action).
# The wheels a GPU machine's image (Python 3.12 with CUDA torch, lightning, pandas... already there) lacks, at
# this venv's versions, into .whl/ for scripts/gpu_checks.sh (antlr4's runtime is only a source package here).
GPU_WHEELS := hydra-core|omegaconf|captum|lightgbm
gpu-wheels: venv
	rm -rf .whl && mkdir .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
		$$($(BIN)/python -m pip freeze | grep -i -E '^($(GPU_WHEELS))==')
	$(BIN)/python -m pip wheel -q --no-deps -w .whl $$($(BIN)/python -m pip freeze | grep -i '^antlr4-python3-runtime==')

demo: venv
	rm -rf checkpoints/demo
	$(BIN)/churnwatch train experiment=demo
	$(BIN)/churnwatch score model_path=checkpoints/demo/model.pt \
		events_path=checkpoints/demo/data/events.parquet customers_path=checkpoints/demo/data/customers.parquet \
		output_path=checkpoints/demo/scores.parquet hydra.run.dir=checkpoints/demo/score

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache dist
