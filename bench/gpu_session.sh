#!/usr/bin/env bash
# One device call that gathers GPU evidence for docs/gpu-verification.md, docs/benchmarks.md and
# docs/sweeps.md. Each step runs under its own time limit so one slow step cannot eat the rest; logs go
# to $OUT (at most 8 files come back). Run from the repo root on the device machine with .device (FLA
# site), .whl (tomli_w), .evaldata (full ARC-Challenge test file) and .tcache (a Triton cache from an
# earlier call, optional) carried. Each mode stays within about 500 s (three calls and their machine
# starts fit a session's 30 device minutes); give `run` timeout_s 560:
#   bash bench/gpu_session.sh train  [STEPS]   # baseline vs our step + profiles, both presets trained, ARC speed
#   bash bench/gpu_session.sh verify [SECTIONS] # `hybridlm verify`, one section per process, streamed
#   bash bench/gpu_session.sh sweep  [STEPS]   # the 13-layout arch sweep on every visible GPU
set -u
mode=${1:?usage: gpu_session.sh train|verify|sweep [STEPS]}; steps=${2:-}
out=${OUT:-/tmp/out}; mkdir -p "$out"
source bench/gpu_env.sh
# verify starts from the training cache (its model checks use the presets' geometry) and brings its own
# back as verify-cache, so the training cache never outgrows the 16 MiB a returned file may have
cache_name=triton-cache; [ "$mode" = verify ] && cache_name=verify-cache
carried=.tcache/$cache_name.tar.xz; [ -f "$carried" ] || carried=.tcache/triton-cache.tar.xz
warm=0; [ -f "$carried" ] && tar -xJf "$carried" -C /tmp && warm=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > /tmp/gpu.txt
started=$SECONDS
# Triton's (and TileLang's) compiled kernels and autotuning results for the next call to carry: built in
# /tmp and moved, so a kill mid-tar never leaves a truncated archive; skipped when over the 16 MiB a
# returned file may have (the carried .tcache then stays the latest one)
save_cache() {
  XZ_OPT=-T0 tar -cJf /tmp/tc.tar.xz -C /tmp triton-cache 2>/dev/null || return 0
  if [ "$(stat -c %s /tmp/tc.tar.xz)" -lt 15000000 ]; then mv /tmp/tc.tar.xz "$out/$cache_name.tar.xz"
  else echo "triton cache $(du -h /tmp/tc.tar.xz | cut -f1): too big to bring back"; fi
}
limit() { timeout -k 15 "$@"; }  # every step: a hard limit, SIGKILL 15 s after SIGTERM

case "$mode" in
train)
  # a cold Triton cache costs the first process ~4 minutes of autotuning (docs/gpu-verification.md)
  bench_s=120; train_s=130; steps=${steps:-200}; [ "$warm" = 0 ] && { bench_s=280; train_s=100; steps=${2:-100}; }
  limit "$bench_s" python3 bench/bench_gpu_train.py --out "$out" --skip-train --presets h100_deltanet \
    --baseline-steps 20 > "$out/bench.txt" 2>&1; echo "bench rc=$? after $((SECONDS - started)) s" >> "$out/bench.txt"
  cat /tmp/gpu.txt >> "$out/bench.txt"; rm -f "$out/summary.json"
  save_cache
  for preset in h100_hybrid_sparse h100_deltanet; do
    limit "$train_s" python3 -m hybridlm.cli train --preset "$preset" --out "/tmp/gpu-runs/$preset" --no-progress \
      --set train.max_steps="$steps" --set train.eval_interval=50 --set train.eval_batches=5 \
      --set train.log_interval=10 --set train.save_interval=100000 > "$out/train_$preset.txt" 2>&1
    echo "train rc=$? after $((SECONDS - started)) s" >> "$out/train_$preset.txt"
  done
  tar --exclude checkpoints -cJf "$out/runs.tar.xz" -C /tmp gpu-runs 2>/dev/null
  limit 50 python3 bench/bench_eval.py --run /tmp/gpu-runs/h100_hybrid_sparse --checkpoint final --device cuda \
    --batch-size 64 --data-dir .evaldata --repeats 3 > "$out/eval_bench.txt" 2>&1
  echo "eval rc=$? after $((SECONDS - started)) s" >> "$out/eval_bench.txt"
  save_cache
  grep "seed baseline:\|hybridlm step\|rc=" "$out/bench.txt"
  for preset in h100_hybrid_sparse h100_deltanet; do grep "val loss\|throughput\|rc=" "$out/train_$preset.txt" | tail -4; done
  tail -4 "$out/eval_bench.txt"
  ;;
verify)
  # SECTIONS (default all): e.g. fla_model,decode,loss,model in one call and op_bf16,op_fp32 in the next.
  # Each section may use all the time left; the Triton cache is saved after each, so the next call
  # resumes from every kernel tuned so far.
  for section in $(echo "${steps:-fla_model,decode,loss,model,op_bf16,op_fp32}" | tr , ' '); do
    left=$((480 - (SECONDS - started))); [ "$left" -lt 30 ] && { echo "$section: skipped, no time left" >> "$out/verify.txt"; continue; }
    echo "== $section" >> "$out/verify.txt"
    limit "$left" python3 -m hybridlm.cli verify --sections "$section" 2>&1 | grep --line-buffered -v TileLang \
      >> "$out/verify.txt"; echo "$section rc=${PIPESTATUS[0]} after $((SECONDS - started)) s" >> "$out/verify.txt"
    save_cache
  done
  cat /tmp/gpu.txt >> "$out/verify.txt"
  grep "ok \|FAIL\|rc=\|skipped" "$out/verify.txt"
  ;;
sweep)
  steps=${steps:-100}
  limit 470 python3 -m hybridlm.cli sweep arch --layouts exp7 --steps "$steps" --out /tmp/arch --devices auto \
    --no-progress --set train.eval_interval=50 --set train.eval_batches=5 --set train.save_interval=100000 \
    > "$out/sweep.txt" 2>&1; echo "sweep rc=$? after $((SECONDS - started)) s" >> "$out/sweep.txt"
  cat /tmp/gpu.txt >> "$out/sweep.txt"
  cp /tmp/arch/summary.json /tmp/arch/summary.md /tmp/arch/*.png "$out/" 2>/dev/null
  tar --exclude checkpoints -cJf "$out/members.tar.xz" -C /tmp arch 2>/dev/null
  tail -25 "$out/sweep.txt"
  ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
