#!/usr/bin/env bash
# One device call that gathers GPU evidence for docs/gpu-verification.md and docs/benchmarks.md, in
# priority order, each step under its own time limit so one slow step cannot eat the rest. Logs go to $OUT.
# Run from the repo root on the device machine with .device (FLA site), .whl (tomli_w), .evaldata (the
# full ARC-Challenge test file) and optionally .tcache (a Triton cache from an earlier call) carried:
#   bash bench/gpu_session.sh [BENCH_S] [TRAIN_S] [EVAL_S] [VERIFY_S] [STEPS]
set -u
bench_s=${1:-150}; train_s=${2:-170}; eval_s=${3:-60}; verify_s=${4:-100}; steps=${5:-200}
out=${OUT:-/tmp/out}; mkdir -p "$out"
source bench/gpu_env.sh
[ -f .tcache/triton-cache.tar.xz ] && tar -xJf .tcache/triton-cache.tar.xz -C /tmp
# 1. seed baseline vs our bare training step, same process, plus profiles
timeout "$bench_s" python3 bench/bench_gpu_train.py --out "$out/train" --skip-train --presets h100_deltanet \
  --baseline-steps 20 > "$out/bench.txt" 2>&1; echo "bench rc=$?" >> "$out/bench.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$out/bench.txt"
rm -f "$out/train/summary.json"  # printed in bench.txt; $OUT brings back at most 8 files
# 2. the trainer, CLI as a user runs it
run=/tmp/gpu-runs/h100_hybrid_sparse
timeout "$train_s" python3 -m hybridlm.cli train --preset h100_hybrid_sparse --out "$run" --no-progress \
  --set train.max_steps="$steps" --set train.eval_interval=50 --set train.eval_batches=5 \
  --set train.log_interval=10 --set train.save_interval=100000 > "$out/train_hybrid_sparse.txt" 2>&1
echo "train rc=$?" >> "$out/train_hybrid_sparse.txt"
cp "$run/metrics.jsonl" "$out/hybrid_sparse_metrics.jsonl" 2>/dev/null
cp "$run/results.json" "$out/hybrid_sparse_results.json" 2>/dev/null
# 3. ARC-Challenge scoring speed on that run, full test set
timeout "$eval_s" python3 bench/bench_eval.py --run "$run" --checkpoint final --device cuda --batch-size 64 \
  --data-dir .evaldata --repeats 3 > "$out/eval_bench.txt" 2>&1; echo "eval rc=$?" >> "$out/eval_bench.txt"
# 4. verification against FLA's model and of decoding
timeout "$verify_s" python3 -m hybridlm.cli verify --sections fla_model,decode,model 2>&1 | grep -v TileLang \
  > "$out/verify.txt"; echo "verify rc=${PIPESTATUS[0]}" >> "$out/verify.txt"
grep "seed baseline:\|hybridlm step\|rc=" "$out/bench.txt"
grep -v "^  \|Warning\|warn" "$out/train_hybrid_sparse.txt" | tail -8
tail -4 "$out/eval_bench.txt"
tail -16 "$out/verify.txt"
