#!/usr/bin/env bash
# Issue 17's GPU mode in one time-boxed run: budget_fmnist.py at width 1.0 on the full Fashion-MNIST, the two MAC
# budgets in two processes side by side on one GPU (one process per budget; the second starts once the first has
# trained the shared dense model), the arms searched, uniform, the searched allocation's channels from scratch and
# the width multiplier (not `global` and `narrow`: time), 2 seeds; then --paired on both result files. The CUDA
# tests (pytest -m cuda) run alongside at the start. Every arm's result is written as soon as it finishes, so a
# run stopped by the time box keeps what finished.
# Usage, from the repository root:
#   bash benchmarks/gpu_budget.sh OUT_DIR DATA_DIR [TOTAL_SECONDS] [SPLIT] [FINETUNE_LR]
#   defaults: 540 s, split 3,2,7 (12 epochs: prune early, fine-tune longest, as the CPU runs found best), lr 0.1
# GPU_BUDGET_ARGS adds arguments to budget_fmnist.py (e.g. --smoke to check this script on a CPU).
# Writes OUT_DIR/gpu_budget.log, OUT_DIR/budget_fmnist_gpu_{macs0.25,macs0.5}.{json,md}, the paired files and
# OUT_DIR/gpu_budget_extra.tar.gz (the plans, every process's log, the CUDA tests' JUnit XML and, with time to
# spare at the end, gpu_throughput.py --no-compile's table).
set -u
cd "$(dirname "$0")/.."
OUT=${1:?OUT_DIR}
DATA=${2:?DATA_DIR}
TOTAL=${3:-540}
SPLIT=${4:-3,2,7}
FTLR=${5:-0.1}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/gpu_budget.log"
SECONDS=0
{
  date -u; echo "commit $(git rev-parse HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-200
  "$PY" -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'onnxruntime', onnxruntime.__version__)"
} >"$LOG" 2>&1
cat "$LOG"
EXTRA="$OUT/extra"; mkdir -p "$EXTRA"
# 1. the CUDA tests, alongside (they need the GPU for a minute or two; the benchmark's numbers are accuracies)
if [ -z "${GPU_BUDGET_NO_TESTS:-}" ]; then
  ( timeout 240 "$PY" -m pytest -q -m cuda -rs -p no:cacheprovider tests/train/test_cuda.py \
      --junitxml="$EXTRA/gpu_check_tests.xml" >"$EXTRA/cuda_tests.log" 2>&1; echo "pytest exit $?" >>"$EXTRA/cuda_tests.log" ) &
  TESTS=$!
fi
# 2. the budgets: one process each; both share the dense model (trained by the first)
common=(benchmarks/budget_fmnist.py --data-dir "$DATA" --split "$SPLIT" --finetune-lr "$FTLR" --threads 6
        --methods searched,uniform,ranked,searched_scratch,width ${GPU_BUDGET_ARGS:-})
left() { echo $((TOTAL - SECONDS)); }
timeout $(( $(left) - 60 )) "$PY" "${common[@]}" --budgets macs=0.25x --out "$OUT/budget_fmnist_gpu_macs0.25" \
  >"$EXTRA/macs0.25.log" 2>&1 &
A=$!
dirs=$("$PY" "${common[@]}" --show-dirs)
work=$(echo "$dirs" | sed -n 1p)
dense="$(echo "$dirs" | sed -n 2p)/model/model.json"
echo "waiting for the dense model: $dense" | tee -a "$LOG"
while [ ! -f "$dense" ] && kill -0 $A 2>/dev/null; do sleep 2; done
timeout $(( $(left) - 60 )) "$PY" "${common[@]}" --budgets macs=0.5x --out "$OUT/budget_fmnist_gpu_macs0.5" \
  >"$EXTRA/macs0.5.log" 2>&1 &
B=$!
wait $A; echo "macs=0.25x: exit $? after $SECONDS s" | tee -a "$LOG"
wait $B; echo "macs=0.5x: exit $? after $SECONDS s" | tee -a "$LOG"
[ -n "${TESTS:-}" ] && wait "$TESTS"
# 3. paired differences from the saved models (whatever finished)
files=$(ls "$OUT"/budget_fmnist_gpu_macs*.json 2>/dev/null)
if [ -n "$files" ]; then
  timeout $(( $(left) > 30 ? $(left) : 30 )) "$PY" "${common[@]}" --paired $files \
    --out "$OUT/budget_fmnist_gpu_paired" >"$EXTRA/paired.log" 2>&1
  echo "paired: exit $? after $SECONDS s" | tee -a "$LOG"
fi
# 4. with time to spare: the eager training-step throughput, dense vs masked (issue 20), alone on the GPU
if [ "$(left)" -ge 90 ] && [ -z "${GPU_BUDGET_NO_TESTS:-}" ]; then
  timeout $(( $(left) - 10 )) "$PY" benchmarks/gpu_throughput.py --no-compile --max-seconds $(( $(left) - 60 )) \
    --data-dir "$DATA" --out "$EXTRA/gpu_throughput" >"$EXTRA/gpu_throughput.log" 2>&1
  echo "gpu_throughput: exit $? after $SECONDS s" | tee -a "$LOG"
fi
for f in "$work"/*/plan/budget_plan.json; do [ -f "$f" ] && cp "$f" "$EXTRA/$(basename "$(dirname "$(dirname "$f")")")_plan.json"; done
tail -n 5 "$EXTRA"/*.log >>"$LOG" 2>&1
tar -czf "$OUT/gpu_budget_extra.tar.gz" -C "$OUT" extra && rm -rf "$EXTRA"
echo "gpu_budget: done after $SECONDS s" | tee -a "$LOG"
