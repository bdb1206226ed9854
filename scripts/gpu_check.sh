#!/usr/bin/env bash
# One call on a lent GPU machine: the GPU tests (every Triton kernel natively, against its reference) and
# the kernel benchmarks, with results under $OUT. Run from the repository root:
#   OUT=/tmp/out bash scripts/gpu_check.sh
# Sized for one device call of at most 10 minutes: tests <= 200 s, each of the 4 benchmarks <= 90 s
# (first calls include Triton compile + autotune); whatever finished is in $OUT even if a step timed out.
# The GPU image has torch, triton, transformers and accelerate but not datasets: seqzoo runs from PYTHONPATH
# and imports datasets lazily (only the eval tasks need it).
set -uo pipefail
OUT=${OUT:-$(pwd)/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$(pwd):${PYTHONPATH:-}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
unset TRITON_INTERPRET
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} > "$OUT/env.txt" 2>&1

# 1. kernel tests on the GPU (the same tests CI runs in the interpreter, now compiled)
timeout 200 python -m pytest -q tests/kernels -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1
echo "kernel tests exit code: $?" >> "$OUT/gpu_tests.txt"

# 2. benchmarks: one JSON + table per op (ops without a bench module are skipped by the loop)
for op in delta_rule linear_attention block_attention rms_norm; do
  if python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('seqzoo.bench.$op') is None)"; then
    timeout 90 python -m seqzoo.bench "$op" --json "$OUT/bench_$op.json" > "$OUT/bench_$op.txt" 2>&1
  fi
done
# the TCN (fused Triton) against MEGA's FFT EMA (cuFFT), D = 512, T = 1k .. 131k (issue 11)
timeout 90 python -m seqzoo.bench dilated_conv --no-scan --json "$OUT/bench_dilated_conv.json" \
  > "$OUT/bench_dilated_conv.txt" 2>&1
tail -n 3 "$OUT"/*.txt
