#!/usr/bin/env bash
# One command for anyone with a GPU machine: does this code run, and how fast, on CUDA?  (<= 8 minutes)
#
#   1. the GPU-marked tests (pytest -m gpu: device k-NN and clustering against the CPU path, mixed-precision
#      training steps, channels_last, the memory update on CUDA)
#   2. the whole pipeline on generated data on CUDA with --amp bf16: stage 1 (baseline_sysu.py, with
#      --channels-last) -> stage 2 (main.py) -> test.py, with the tiny settings of tests/e2e_harness.py
#   3. scripts/bench_train.py at real size (ResNet-50 at 288x144, the released batches, SYSU-sized
#      clustering): loader images/s per core, step times per --amp mode, extraction, clustering, and the
#      estimated wall-clock of both stages on SYSU-MM01
# Prints one table (and the benchmark's tables); exits non-zero if any step failed or ran out of time.
#
# Usage: bash scripts/gpu_check.sh [OUT_DIR]       (default OUT_DIR: gpu_check_run; logs per step inside)
#        PYTHON=/path/to/python bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_run}"
PY="${PYTHON:-python}"
BUDGET=480   # seconds for everything; each step gets at most its own cap and what is left of this
mkdir -p "$OUT"
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device is visible to $PY (torch.cuda.is_available() is False)" >&2
    exit 2
fi
start=$SECONDS
FAILED=0
ROWS=()
run() {  # run NAME CAP_SECONDS COMMAND...: output to $OUT/NAME.log, one row of the table
    local name=$1 cap=$2 t0=$SECONDS status=ok rc=0
    shift 2
    local left=$((BUDGET - (SECONDS - start)))
    if [ "$left" -le 0 ]; then
        status="FAIL (no time left)"
        FAILED=1
    else
        [ "$cap" -gt "$left" ] && cap=$left
        timeout "$cap" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
        if [ "$rc" -ne 0 ]; then
            status="FAIL (exit $rc$([ "$rc" -eq 124 ] && echo ", timed out after ${cap}s"))"
            FAILED=1
        fi
    fi
    ROWS+=("$(printf '%-10s %-34s %5ss  %s' "$name" "$status" "$((SECONDS - t0))" "$OUT/$name.log")")
    echo "${ROWS[-1]}"
}

DATA="$OUT/data"
LOGS="$OUT/logs"
rm -rf -- "$LOGS"
TINY=(--device cuda --amp bf16 --arch resnet18 --img-h 32 --img-w 16 --workers 2)

run gpu_tests 120 "$PY" -m pytest -q -m gpu tests/
run data 60 "$PY" scripts/make_synthetic.py --layout sysu --out "$DATA" --ids 24 --seed 0 --img-h 64 --img-w 32 --force
run stage1 120 "$PY" baseline_sysu.py --data-dir "$DATA" --output-dir "$LOGS" "${TINY[@]}" --channels-last \
    --pretrained none --epochs 2 --iters 2 --batch-size 16 --num-instances 4 --k1 15 --eps 0.45 \
    --k1-joint 20 --k2-joint 10 --eval-step 2
run stage2 120 "$PY" main.py --dataset sysu --data-dir "$DATA" --output-dir "$LOGS" "${TINY[@]}" \
    --resume-net1 "$LOGS/sysu/baseline/final.pth" --epochs 2 --warm-epochs 1 --lr 0.02 --matching hungarian \
    --batch-ids 2 --num-pos 4 --eval-step 2
run test 60 "$PY" test.py --dataset sysu --data-dir "$DATA" --resume-net1 "$LOGS/sysu/mmm/best.pth" "${TINY[@]}"
run bench 300 "$PY" scripts/bench_train.py --device cuda --size real --out "$OUT/bench_train.json" \
    --workdir "$OUT/bench_work"

echo
echo "== gpu_check ($((SECONDS - start))s; logs in $OUT)"
printf '%-10s %-34s %6s  %s\n' step status time log
printf '%s\n' "${ROWS[@]}"
if [ -f "$OUT/bench.log" ]; then
    echo
    sed -n '/^loader, images/,$p' "$OUT/bench.log"
fi
exit "$FAILED"
