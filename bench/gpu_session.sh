#!/usr/bin/env bash
# One device call that gathers the GPU evidence of docs/gpu-verification.md, in priority order, each
# step under its own time limit so one slow step cannot eat the rest. Logs land in $OUT.
# Run from the repo root on the device machine, with .device (FLA site), .whl (tomli_w) and .evaldata
# (full ARC-Challenge test file) carried:
#   bash bench/gpu_session.sh [BENCH_S] [STEPS] [EVAL_S]
set -u
bench_s=${1:-450}; steps=${2:-200}; eval_s=${3:-60}
out=${OUT:-/tmp/out}; mkdir -p "$out"
source bench/gpu_env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt"
python3 -m hybridlm.cli doctor > "$out/doctor.txt" 2>&1
timeout "$bench_s" python3 bench/bench_gpu_train.py --out "$out/train" --steps "$steps" --baseline-steps 20 \
  > "$out/bench.txt" 2>&1; echo "bench rc=$?" >> "$out/bench.txt"
run=/tmp/gpu-runs/h100_hybrid_sparse
timeout "$eval_s" python3 bench/bench_eval.py --run "$run" --checkpoint final --device cuda --batch-size 64 \
  --data-dir .evaldata --repeats 3 > "$out/eval_bench.txt" 2>&1; echo "eval rc=$?" >> "$out/eval_bench.txt"
# Triton's compiled kernels and autotuning results, for the next call to carry (if small enough)
tar -cJf "$out/triton-cache.tar.xz" -C /tmp triton-cache 2>/dev/null
ls -la "$out"
cat "$out/gpu.txt"
grep -v "TileLang\|^  \|^    \|^Thread\|^$\|^Timeout" "$out/bench.txt" | grep -v "^-\|^Name\|^Self" | tail -25
tail -6 "$out/eval_bench.txt"
