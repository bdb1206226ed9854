#!/usr/bin/env bash
# One call on a lent GPU machine, budgeted to ~450 s in all: GPU-only correctness checks first, then every
# kernel benchmark (seqzoo/bench/*.py, found automatically), then the kernel test suite natively if time is
# left. Results land under $OUT as they finish (a step killed by its budget leaves what it wrote).
#
#   OUT=/tmp/out bash scripts/gpu_check.sh [--wheels DIR] [--only STEPS] [--total S] [--dry-run]
#
#   --wheels DIR  pip install --no-deps every wheel in DIR first (fla-core==0.6.0, einops: the GPU machine
#                 has no package index; scripts/fetch_gpu_wheels.sh downloads them on the CPU side)
#   --only STEPS  comma list of the steps to run: tests (GPU-only correctness), kernel-tests, and bench op names
#                 (e.g. --only tests,delta_rule,linear_attention); default all. For a second call that reruns
#                 what the first fixed or did not reach.
#   --total S     the whole script's budget in seconds (default 450)
#   --dry-run     on a CPU: print every step with its budget, check the wheels install (pip --dry-run),
#                 collect the GPU tests, and run every bench command in a tiny CPU mode (--smoke) so that a
#                 broken command line shows up before a GPU is spent on it
#
# Files under $OUT (few, flat: the device tool returns at most 8): env.txt, gpu_tests.txt, bench.jsonl (one
# JSON line per measured row or timing, with "first call s" = compile + autotune of that call), bench.txt
# (the tables), summary.txt (each step's wall time and exit code; per op the first-call seconds),
# kernel_tests.txt.
set -uo pipefail

DRY=0
WHEELS=""
ONLY=""
TOTAL=450          # seconds for the whole script on the GPU (the dry run prints these, and runs on its own clock)
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --wheels) WHEELS="$2"; shift ;;
    --wheels=*) WHEELS="${1#--wheels=}" ;;
    --only) ONLY="$2"; shift ;;
    --only=*) ONLY="${1#--only=}" ;;
    --total) TOTAL="$2"; shift ;;
    --total=*) TOTAL="${1#--total=}" ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

OUT=${OUT:-$(pwd)/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$(pwd):${PYTHONPATH:-}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRITON_DEFAULT_FP_FUSION=1
PY=${PYTHON:-python}
[ "$DRY" = 1 ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
[ "$DRY" = 1 ] || unset TRITON_INTERPRET

# Budgets and arguments from the first H200 run (2026-11-27): fla's first call is 43 s for chunk_delta_rule's
# forward alone; ours are 1-9 s per op; the GPU-only tests compile every kernel of three ops (> 65 s).
T_ENV=30; T_WHEELS=40; T_GPU_TESTS=150
T_BENCH_DEFAULT=25 # per bench op not listed below
declare -A T_BENCH=([delta_rule]=150 [linear_attention]=100 [block_attention]=30 [ssd_scan]=35 [rms_norm]=15
                    [statistical_topk]=20)
PRIORITY="delta_rule linear_attention block_attention"  # benched first; the rest alphabetically
# bench arguments on the GPU: one shape each (the issue's), so that first calls (compile + autotune, fla's
# included) fit; SDPA at (8, 2048) is timed by block_attention's table and ssd_scan's
declare -A BENCH_ARGS=([delta_rule]="--shapes 8,2048,16,128 --impls triton,fla"
                       [linear_attention]="--shapes 8x2048"
                       [block_attention]="--shapes 1x32768"
                       [ssd_scan]="--shapes 8,2048,32,64,128 --impls triton,sdpa,mamba_ssm"
                       [selective_scan]="--shapes 8,2048,2048,16"
                       [rms_norm]="--rows 4096 --dim 8192"
                       [statistical_topk]="--rows 4096 --dims 8192"
                       [dilated_conv]="--lengths 131072"
                       [spark_decode]="--widths 1024 --batch-sizes 1 8")
GPU_TOTAL=$TOTAL
[ "$DRY" = 1 ] && TOTAL=3600  # a loaded CPU is slower than the GPU machine at everything; budgets shown are the GPU's
START=$SECONDS
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

left() { echo $(( TOTAL - (SECONDS - START) )); }
wanted() { [ -z "$ONLY" ] || case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# step NAME BUDGET LOGFILE CMD...: run CMD under min(BUDGET, time left), log wall time and exit code
step() {
  local name=$1 budget=$2 log=$3; shift 3
  local avail; avail=$(left)
  (( budget > avail )) && budget=$avail
  if (( budget < 5 )); then
    echo "$name: skipped (out of budget)" | tee -a "$SUMMARY"
    return 0
  fi
  echo "== $name (budget ${budget}s, $(left)s of ${TOTAL}s left): $*" | tee -a "$SUMMARY"
  local t0=$SECONDS rc
  timeout --kill-after=5 "$budget" "$@" >> "$log" 2>&1
  rc=$?
  echo "   $name: exit $rc after $(( SECONDS - t0 ))s$([ $rc = 124 ] && echo ' (budget reached)')" | tee -a "$SUMMARY"
  return 0
}

# every bench module except the shared ones: ops added later join without editing this script
FOUND=$(cd seqzoo/bench && ls *.py | sed 's/\.py$//' | grep -vxE '__init__|__main__|common|compile_report' | sort)
BENCH_OPS=""
for op in $PRIORITY; do echo "$FOUND" | grep -qx "$op" && wanted "$op" && BENCH_OPS="$BENCH_OPS $op"; done
for op in $FOUND; do case " $PRIORITY " in *" $op "*) ;; *) wanted "$op" && BENCH_OPS="$BENCH_OPS $op" ;; esac; done
for name in ${ONLY//,/ }; do
  case "$name" in tests|kernel-tests) ;; *) echo "$FOUND" | grep -qx "$name" || {
    echo "gpu_check.sh: --only names '$name', which is neither tests, kernel-tests nor a bench op ($(echo $FOUND))" >&2
    exit 2; } ;; esac
done

echo "gpu_check: GPU budget ${GPU_TOTAL}s (env ${T_ENV}, wheels ${T_WHEELS}, gpu tests ${T_GPU_TESTS}, then per bench op:" \
     "$(for op in $BENCH_OPS; do printf '%s %ss, ' "$op" "${T_BENCH[$op]:-$T_BENCH_DEFAULT}"; done)kernel tests: the rest)" \
     | tee -a "$SUMMARY"

# 1. environment
step env "$T_ENV" "$OUT/env.txt" bash -c "date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true; $PY -c \"import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())\""

# 2. carried wheels (no index on the GPU machine)
if [ -n "$WHEELS" ]; then
  shopt -s nullglob
  whls=("$WHEELS"/*.whl)
  if [ ${#whls[@]} = 0 ]; then
    echo "wheels: none found in $WHEELS" | tee -a "$SUMMARY"
  elif [ "$DRY" = 1 ]; then
    step "wheels (pip --dry-run)" "$T_WHEELS" "$OUT/env.txt" "$PY" -m pip install --no-deps --no-index --dry-run "${whls[@]}"
  else
    step wheels "$T_WHEELS" "$OUT/env.txt" "$PY" -m pip install --no-deps --no-index "${whls[@]}"
    "$PY" -c "import fla; print('fla', fla.__version__)" >> "$OUT/env.txt" 2>&1
  fi
fi

# 3. GPU-only correctness at the benchmark shapes (first: the numbers below mean nothing without them)
if ! wanted tests; then
  echo "gpu tests: not selected (--only)" | tee -a "$SUMMARY"
elif [ "$DRY" = 1 ]; then
  step "gpu tests (collect only; GPU budget ${T_GPU_TESTS}s)" 180 "$OUT/gpu_tests.txt" "$PY" -m pytest -q -p no:cacheprovider -m gpu --collect-only tests/kernels
else
  step "gpu tests" "$T_GPU_TESTS" "$OUT/gpu_tests.txt" "$PY" -m pytest -q -p no:cacheprovider -m gpu -x tests/kernels
fi

# 4. benchmarks: each row appended to bench.jsonl as soon as it is measured
for op in $BENCH_OPS; do
  b=${T_BENCH[$op]:-$T_BENCH_DEFAULT}
  if [ "$DRY" = 1 ]; then
    # shellcheck disable=SC2086
    step "bench $op (dry run: the GPU arguments parse)" 60 "$OUT/bench.txt" \
      "$PY" -m seqzoo.bench "$op" ${BENCH_ARGS[$op]:-} --check-args
    step "bench $op (dry run: --smoke on cpu; GPU budget ${b}s)" 120 "$OUT/bench.txt" \
      "$PY" -m seqzoo.bench "$op" --device cpu --smoke --jsonl "$OUT/bench.jsonl"
  else
    # shellcheck disable=SC2086
    step "bench $op" "$b" "$OUT/bench.txt" "$PY" -m seqzoo.bench "$op" ${BENCH_ARGS[$op]:-} --jsonl "$OUT/bench.jsonl"
  fi
done

# first-call (compile + autotune) seconds per op, from the rows written so far
"$PY" - "$OUT/bench.jsonl" >> "$SUMMARY" 2>&1 <<'EOF'
import json, sys, collections
first = collections.defaultdict(list)
try:
    for line in open(sys.argv[1]):
        r = json.loads(line)
        if r.get("kind") == "row" and isinstance(r.get("first call s"), (int, float)):
            first[r["op"]].append((r["first call s"], r.get("impl"), r.get("pass")))
except FileNotFoundError:
    pass
print("first call (compile + autotune + one run), seconds, per op: max over rows [impl, pass]")
for op, v in sorted(first.items()):
    s, impl, p = max(v)
    print(f"  {op}: {s:.1f} s [{impl}, {p}]; all rows {sum(x[0] for x in v):.1f} s")
EOF

# 5. the kernel test suite natively, with what is left
if ! wanted kernel-tests; then
  echo "kernel tests: not selected (--only)" | tee -a "$SUMMARY"
elif [ "$DRY" = 1 ]; then
  echo "kernel tests: on the GPU they get what is left of ${GPU_TOTAL}s" | tee -a "$SUMMARY"
else
  step "kernel tests" "$(left)" "$OUT/kernel_tests.txt" "$PY" -m pytest -q -p no:cacheprovider -x tests/kernels
fi

echo "total: $(( SECONDS - START ))s of ${TOTAL}s" | tee -a "$SUMMARY"
