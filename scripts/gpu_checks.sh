#!/usr/bin/env bash
# Issue 21's GPU figures in one run (goal 4), sized to fit one device-tool command (10 minutes): training
# throughput (transformer, LSTM, GRU; real batches against in-device; host batches, then gathered on the
# device with widths rounded; a 4x batch; torch.compile) and batch scoring on the GPU. TESTS=1 runs the
# CUDA test suite first (`make test-gpu`; give it its own command). Each step has its own time limit and
# writes its table into $OUT; a step that fails is logged and the next one runs.
#
#   make gpu-wheels                  # here, once: the Python 3.12 wheels churnwatch needs that the image lacks
#   bash scripts/gpu_checks.sh       # there (device tool: carry .whl and checkpoints/demo/model.pt)
#
# Env: OUT (default /tmp/churnwatch_gpu_checks), DEVICE (cuda; `cpu` runs the same steps shrunk, to check
# the script itself), MODEL (default checkpoints/demo/model.pt, the exported demo LSTM).
set -uo pipefail
OUT=${OUT:-/tmp/churnwatch_gpu_checks}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-checkpoints/demo/model.pt}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="src:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CHURNWATCH_CACHE_DIR=/tmp/churnwatch_cache
if [ "$DEVICE" = cuda ]; then
    customers=20000 steps=40 warmup=120 score=1000000
else
    customers=2000 steps=3 warmup=1 score=2000
fi

step() {  # step NAME SECONDS COMMAND...: run it, its output into $OUT/NAME.md, its time and status logged
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.md" 2>"$OUT/$name.err"
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/steps.log"
    tail -n 12 "$OUT/$name.md"
}

"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" \
    | tee "$OUT/steps.log"
train=(scripts/bench_train.py --device "$DEVICE" --precision bf16 --customers "$customers" --steps "$steps"
    --warmup "$warmup" --data-dir /tmp/churnwatch_bench_train)
if [ "${TESTS:-0}" = 1 ]; then
    step test_gpu 540 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/runtime/test_gpu.py
fi
# the first table's batch 512 matches the H100 figures of 2026-11-23 (docs/BENCHMARKS.md); host batches,
# then gathered on the device (auto: there when the split fits), then 4x the batch, then compiled
step train_host 150 "$PY" "${train[@]}" --batch-size 512 --device-gather false
step train_device 120 "$PY" "${train[@]}" --batch-size 512 --device-gather auto
step train_batch_2048 120 "$PY" "${train[@]}" --batch-size 2048 --device-gather auto
step train_compiled 180 "$PY" "${train[@]}" --batch-size 2048 --device-gather auto --compile --models transformer
if [ -f "$MODEL" ]; then
    step score 240 "$PY" scripts/bench_score.py --model "$MODEL" --customers "$score" --drivers off --device "$DEVICE" \
        --precision bf16 --as-of 2025-01-01 --threads 8
else
    echo "score: skipped, no model at $MODEL" | tee -a "$OUT/steps.log"
fi
