#!/usr/bin/env bash
# One time-boxed session on a lent GPU machine (see benchmarks/README.md, "GPU runs"):
#   1. gpu_throughput.py (issue 8): dense vs masked training img/s, eager vs compiled, 28x28 and 224x224, plus one
#      full Fashion-MNIST epoch;
#   2. peers.py (issue 9) on full Fashion-MNIST at width 1.0 with a reduced epoch budget and a priority-ordered
#      variant list, stopped by --deadline so that the report covers what finished.
# Usage: benchmarks/gpu_session.sh DATA_DIR OUT_DIR [TOTAL_SECONDS]
# Results go to OUT_DIR (json/md/png + one log). Needs torch, onnx, onnxruntime, safetensors and torch-pruning on
# PYTHONPATH (the package itself is used from src/ when it is not installed).
set -u
DATA=${1:?Fashion-MNIST dir}; OUT=${2:?output dir}; TOTAL=${3:-570}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG="$OUT/session.log"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  $PY -c "import torch, torchvision, onnx, onnxruntime, torch_pruning, importlib.metadata as md; print('torch', torch.__version__, 'tv', torchvision.__version__, 'onnx', onnx.__version__, 'ort', onnxruntime.__version__, 'tp', md.version('torch-pruning'), 'cuda', torch.cuda.is_available())"
} >"$LOG" 2>&1
left() { echo $((TOTAL - SECONDS)); }

timeout $(( $(left) < 240 ? $(left) : 240 )) $PY benchmarks/gpu_throughput.py --data-dir "$DATA" --max-seconds 150 \
  --out "$OUT/gpu_throughput" >>"$LOG" 2>&1 || echo "gpu_throughput exit $?" >>"$LOG"

# Peers: width 1.0, full data, 6 dense + 2 prune + 4 fine-tune = 12 epochs per method, LR 0.1 / 0.05.
ONLY=pk-gradual-l1-local-50,tp-oneshot-mag-50,width-match-50,pk-oneshot-l1-local-50,dense,pk-gradual-l1-local-75
ONLY=$ONLY,tp-oneshot-mag-75,width-match-75,tp-iterative-mag-50,torch-ln-structured-50,pk-oneshot-l1-local-75
ONLY=$ONLY,pk-gradual-taylor-local-50,pk-gradual-l1-global-50,tp-iterative-mag-75,pk-gradual-taylor-local-75
DEADLINE=$(( $(left) - 100 ))
timeout $(( $(left) - 8 )) $PY benchmarks/peers.py --data-dir "$DATA" --width 1.0 --dense-epochs 6 --prune-epochs 2 \
  --finetune-epochs 4 --stage-lr 0.05 --exporter legacy --latency-seconds 1.5 --threads 4 --reseed 0 \
  --deadline "$DEADLINE" --only "$ONLY" --out "$OUT/peers" >>"$LOG" 2>&1 || echo "peers exit $?" >>"$LOG"
cp benchmarks/results/_work/peers/partial.json "$OUT/peers_partial.json" 2>/dev/null
ls -la "$OUT" >>"$LOG"
tail -c 6000 "$LOG"
