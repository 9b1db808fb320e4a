#!/usr/bin/env bash
# Everything that needs a GPU, in one time-boxed run (issue 20); about 7 minutes on one H100/H200:
#   1. the CUDA tests (pytest -m cuda: tests/train/test_cuda.py): GPU-resident data + on-device augmentation,
#      bf16 autocast, channels_last, CUDA SyncBatchNorm, masks under torch.compile (Inductor), DDP over NCCL via
#      torchrun (2 processes if 2 GPUs, else 1); they must *pass*, not skip;
#   2. benchmarks/gpu_throughput.py: dense vs 50%-masked MobileNet V1 training step, eager then compiled, 28x28
#      then 224x224, time-boxed so that whatever finished is written.
# Usage, from the repository root (the venv is built by `make .venv/bin/.installed` if missing, not timed):
#   bash benchmarks/gpu_check.sh [OUT_DIR] [TOTAL_SECONDS]      # defaults: benchmarks/results 450
# Writes OUT_DIR/gpu_check.{md,log}, OUT_DIR/gpu_check_tests.xml (JUnit) and OUT_DIR/gpu_throughput.{json,md}.
# Exit status: 0 when every CUDA test passed (none skipped) and the benchmark ran, else 1.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
TOTAL=${2:-450}
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then make .venv/bin/.installed || exit 1; fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/gpu_check.log"
SECONDS=0
left() { echo $((TOTAL - SECONDS)); }
status=0
{
  date -u; echo "commit $(git rev-parse HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'gpus', torch.cuda.device_count())"
} >"$LOG" 2>&1
cat "$LOG"
# GPU_CHECK_DRY_RUN=1 runs the script on a CPU (the CUDA tests skip, so it exits 1) to check the script itself;
# GPU_THROUGHPUT_ARGS adds arguments to gpu_throughput.py (e.g. smaller settings for such a dry run).
if [ -z "${GPU_CHECK_DRY_RUN:-}" ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device visible to $PY: nothing to check" | tee -a "$LOG"
  exit 1
fi

echo "== 1. CUDA tests ($(left) s left)" | tee -a "$LOG"
timeout 240 "$PY" -m pytest -q -m cuda -rs -p no:cacheprovider tests/train/test_cuda.py \
  --junitxml="$OUT/gpu_check_tests.xml" 2>&1 | tee -a "$LOG"
test_rc=${PIPESTATUS[0]}
[ "$test_rc" -eq 0 ] || status=1

echo "== 2. gpu_throughput.py ($(left) s left)" | tee -a "$LOG"
# --max-seconds stops starting new measurements (one compiled pair takes ~1-2 min); timeout is the hard stop.
hard=$(( $(left) - 15 )); [ "$hard" -ge 120 ] || hard=120
box=$(( $(left) - 150 )); [ "$box" -ge 30 ] || box=30
timeout "$hard" "$PY" benchmarks/gpu_throughput.py --max-seconds "$box" --out "$OUT/gpu_throughput" \
  ${GPU_THROUGHPUT_ARGS:-} 2>&1 | tee -a "$LOG"
bench_rc=${PIPESTATUS[0]}
[ "$bench_rc" -eq 0 ] || status=1

"$PY" - "$OUT" "$test_rc" "$bench_rc" "$SECONDS" <<'EOF' 2>&1 | tee -a "$LOG"
import subprocess, sys, xml.etree.ElementTree as ET
from pathlib import Path

out, test_rc, bench_rc, secs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
lines = ["# GPU check", "", f"Commit `{subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()}`,"
         f" {secs} s in all (`bash benchmarks/gpu_check.sh`).", "", "## CUDA tests", ""]
xml = out / "gpu_check_tests.xml"
skipped = 0
if xml.exists():
    root = ET.parse(xml).getroot()
    for case in root.iter("testcase"):
        res = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        skipped += res == "skipped"
        lines.append(f"- {res}: `{case.get('name')}` ({float(case.get('time', 0)):.1f} s)")
else:
    lines.append("- no JUnit file (pytest did not finish)")
lines += ["", f"pytest exit status {test_rc}" + (f"; {skipped} skipped" if skipped else ""), "", "## Throughput", ""]
tp = out / "gpu_throughput.md"
lines += tp.read_text().splitlines()[2:] if tp.exists() else ["(no result)"]
lines += ["", f"gpu_throughput.py exit status {bench_rc}"]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(1 if skipped else 0)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check: status $status after $SECONDS s; results in $OUT" | tee -a "$LOG"
exit $status
