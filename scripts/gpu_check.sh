#!/usr/bin/env bash
# One command for whoever first has a GPU machine: does what users run work on CUDA, and how fast?  (<= 8 min)
#
#   gpu           the GPUs, their compute capability, bfloat16 and faiss-gpu support (checked first: the bf16
#                 and faiss checks below run only where supported)
#   gpu_tests     the GPU-marked tests (pytest -m gpu: k-NN and clustering against the CPU path, mixed-precision
#                 steps, channels_last, the memory update on CUDA)
#   s1_cudaN      stage 1 on the LAST visible GPU (--device cuda:N, --channels-last), float32 (+TF32)
#   s2_cudaN      stage 2 on the same GPU from that stage 1; test_cudaN: test.py on its best.pth
#   s1_fp16       stage 1 and stage 2 with --amp fp16 (autocast + GradScaler)
#   s2_fp16
#   s1_bf16       stage 1 and stage 2 with --amp bf16, where the GPU has bfloat16 (compute capability >= 8.0)
#   s2_bf16
#   s1_faiss      stage 1 with --knn faiss on the GPU, where faiss-gpu is installed
#   s1_dp         >= 2 GPUs: stage 1 under DataParallel over every visible GPU (--device cuda)
#   s1_ddp        >= 2 GPUs: stage 1 and stage 2 under torchrun with 2 processes (NCCL) and --sync-bn
#   s2_ddp
#   speed         scripts/bench_train.py at real size (ResNet-50 at 288x144, the released batches, SYSU-sized
#                 clustering): step times per --amp mode, loader, extraction, clustering, stage estimates
# The pipeline runs use generated data (SYSU layout, 24 ids) and tiny settings (resnet18 at 32x16, 2 epochs of 2
# iterations). Every check prints one line (name, status, seconds, log); a check not applicable here prints
# "skipped (reason)". The table is repeated at the end, then the speed tables. Exits 1 if any check failed.
#
# Usage: bash scripts/gpu_check.sh [OUT_DIR]       (default OUT_DIR: gpu_check_run; one log per check inside;
#        a new or empty folder, or one this script made: it leaves OUT_DIR/.mmm_gpu_check there)
#        PYTHON=/path/to/python bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_run}"
PY="${PYTHON:-python}"
BUDGET=480   # seconds for everything; each check gets at most its own cap and what is left of this
# Only a folder this script made (marker), an empty one or a new one: it replaces OUT_DIR/logs on every run,
# so it never works in someone else's folder.
if [ -e "$OUT" ] && [ ! -f "$OUT/.mmm_gpu_check" ]; then
    if [ ! -d "$OUT" ] || [ -n "$(ls -A "$OUT")" ]; then
        echo "error: $OUT exists and was not made by scripts/gpu_check.sh (no $OUT/.mmm_gpu_check); give a new or empty folder" >&2
        exit 2
    fi
fi
mkdir -p "$OUT"
echo "made by scripts/gpu_check.sh; it replaces logs/ here on every run" > "$OUT/.mmm_gpu_check"
INFO=$("$PY" - <<'EOF'
import torch
if not torch.cuda.is_available():
    raise SystemExit(1)
n = torch.cuda.device_count()
major, minor = torch.cuda.get_device_capability(n - 1)
bf16 = int(torch.cuda.is_bf16_supported(including_emulation=False))
try:
    import faiss
    gpu_faiss = int(hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)
except ImportError:
    gpu_faiss = 0
print(n, f"{major}.{minor}", bf16, gpu_faiss, torch.cuda.get_device_name(n - 1).replace(" ", "_"), torch.__version__)
EOF
) || { echo "gpu_check: no CUDA device is visible to $PY (torch.cuda.is_available() is False)" >&2; exit 2; }
read -r NGPU CAP BF16 FAISS_GPU GPU_NAME TORCH_VERSION <<<"$INFO"
LAST=$((NGPU - 1))
start=$SECONDS
FAILED=0
ROWS=()
row() {  # row NAME STATUS SECONDS LOG: print one line of the table and keep it for the summary
    ROWS+=("$(printf '%-11s %-40s %5ss  %s' "$1" "$2" "$3" "$4")")
    echo "${ROWS[-1]}"
}
skip() {  # skip NAME REASON
    row "$1" "skipped ($2)" 0 -
}
run() {  # run NAME CAP_SECONDS COMMAND...: output to $OUT/NAME.log, one line of the table
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
    row "$name" "$status" "$((SECONDS - t0))" "$OUT/$name.log"
}

DATA="$OUT/data"
rm -rf -- "$OUT/logs"
TINY=(--arch resnet18 --img-h 32 --img-w 16 --workers 2)
S1=(--data-dir "$DATA" --pretrained none --epochs 2 --iters 2 --batch-size 16 --num-instances 4 --k1 15 --eps 0.45
    --k1-joint 20 --k2-joint 10 --eval-step 2)
S2=(--dataset sysu --data-dir "$DATA" --epochs 2 --warm-epochs 1 --lr 0.02 --matching hungarian --batch-ids 2
    --num-pos 4 --eval-step 2)
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node 2)
stage1() {  # stage1 NAME CAP RUN LAUNCHER... -- FLAGS...: baseline_sysu.py into $OUT/logs/RUN
    local name=$1 cap=$2 dir="$OUT/logs/$3" launcher=()
    shift 3
    while [ "$1" != "--" ]; do launcher+=("$1"); shift; done
    shift
    run "$name" "$cap" "${launcher[@]}" baseline_sysu.py --output-dir "$dir" "${S1[@]}" "${TINY[@]}" "$@"
}
stage2() {  # stage2 NAME CAP RUN LAUNCHER... -- FLAGS...: main.py from the stage 1 of $OUT/logs/RUN
    local name=$1 cap=$2 dir="$OUT/logs/$3" launcher=()
    shift 3
    while [ "$1" != "--" ]; do launcher+=("$1"); shift; done
    shift
    run "$name" "$cap" "${launcher[@]}" main.py --output-dir "$dir" --resume-net1 "$dir/sysu/baseline/final.pth" \
        "${S2[@]}" "${TINY[@]}" "$@"
}

row gpu "$NGPU x $GPU_NAME, cc $CAP, bf16 $BF16, faiss-gpu $FAISS_GPU" 0 "torch $TORCH_VERSION"
run gpu_tests 90 "$PY" -m pytest -q -m gpu tests/
run data 30 "$PY" scripts/make_synthetic.py --layout sysu --out "$DATA" --ids 24 --seed 0 --img-h 64 --img-w 32 --force
stage1 s1_cudaN 45 cudaN "$PY" -- --device "cuda:$LAST" --channels-last
stage2 s2_cudaN 45 cudaN "$PY" -- --device "cuda:$LAST" --channels-last
run test_cudaN 30 "$PY" test.py --dataset sysu --data-dir "$DATA" --resume-net1 "$OUT/logs/cudaN/sysu/mmm/best.pth" \
    "${TINY[@]}" --device "cuda:$LAST"
stage1 s1_fp16 45 fp16 "$PY" -- --device cuda --amp fp16
stage2 s2_fp16 45 fp16 "$PY" -- --device cuda --amp fp16
if [ "$BF16" = 1 ]; then
    stage1 s1_bf16 45 bf16 "$PY" -- --device cuda --amp bf16
    stage2 s2_bf16 45 bf16 "$PY" -- --device cuda --amp bf16
else
    skip s1_bf16 "no bfloat16 on compute capability $CAP"
    skip s2_bf16 "no bfloat16 on compute capability $CAP"
fi
if [ "$FAISS_GPU" = 1 ]; then
    stage1 s1_faiss 45 faiss "$PY" -- --device cuda --knn faiss
else
    skip s1_faiss "faiss-gpu not installed"
fi
if [ "$NGPU" -ge 2 ]; then
    stage1 s1_dp 45 dp "$PY" -- --device cuda
    stage1 s1_ddp 60 ddp "${TORCHRUN[@]}" -- --device cuda --sync-bn
    stage2 s2_ddp 60 ddp "${TORCHRUN[@]}" -- --device cuda --sync-bn
else
    skip s1_dp "1 GPU"
    skip s1_ddp "1 GPU"
    skip s2_ddp "1 GPU"
fi
run speed 180 "$PY" scripts/bench_train.py --device cuda --size real --out "$OUT/bench_train.json" \
    --workdir "$OUT/bench_work"

echo
echo "== gpu_check ($((SECONDS - start))s; logs in $OUT)"
printf '%-11s %-40s %6s  %s\n' check status time log
printf '%s\n' "${ROWS[@]}"
if [ -f "$OUT/speed.log" ]; then
    echo
    sed -n '/^loader, images/,$p' "$OUT/speed.log"
fi
exit "$FAILED"
