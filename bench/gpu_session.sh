#!/usr/bin/env bash
# One device call that gathers GPU evidence for docs/gpu-verification.md, docs/benchmarks.md and
# docs/sweeps.md. Each step runs under its own time limit so one slow step cannot eat the rest; logs go
# to $OUT (at most 8 files come back). Run from the repo root on the device machine with .device (FLA
# site), .whl (tomli_w), .evaldata (full ARC-Challenge test file) and .tcache (a Triton cache from an
# earlier call, optional) carried. Each mode stays within about 500 s (sweep: 560 s; a few calls and their machine
# starts fit a session's 30 device minutes); give `run` timeout_s 590:
#   bash bench/gpu_session.sh train  [STEPS]   # baseline vs our step + profiles, both presets trained, ARC speed
#   bash bench/gpu_session.sh verify [SECTIONS] # `hybridlm verify`, one section per process, streamed
#   bash bench/gpu_session.sh sweep  [STEPS]   # the 13-layout arch sweep on every visible GPU
#   bash bench/gpu_session.sh pair   [SECTIONS] # two GPUs (kind nvidia-h100-x2): verify on one, train on the other
#   bash bench/gpu_session.sh verify2 SECTIONS_A SECTIONS_B  # two GPUs: verify SECTIONS_A on one, SECTIONS_B
#                                              # on the other (e.g. op_bf16,model op_fp32); logs in $OUT/a, $OUT/b
#   bash bench/gpu_session.sh speed [ROWS] [SHAPES] [MODES]  # bench_train_gpu.py table (+ profiles of the
#                                              # h100_deltanet rows), then the verify `compile` section
#   bash bench/gpu_session.sh final             # one call for everything a session measures last: the training
#                                              # table (eager / auto), generation speed, verify decode+compile,
#                                              # and 1-GPU torchrun DDP / FSDP2 against the plain run
#   bash bench/gpu_session.sh probe            # FLA's gradients vs float64 (bench/gpu_grad_probe.py), then the
#                                              # model verify rows that reuse training kernels (~4 minutes)
set -u
mode=${1:?usage: gpu_session.sh train|verify|verify2|pair|probe|sweep [ARGS]}; steps=${2:-}
out=${OUT:-/tmp/out}; mkdir -p "$out"
source bench/gpu_env.sh
# verify starts from the training cache (its model checks use the presets' geometry) and brings its own
# back as verify-cache, so the training cache never outgrows the 16 MiB a returned file may have. Each
# cache lives in its own folder (/tmp/NAME/triton-cache) so that pair mode's two processes keep them apart.
unpack_cache() {  # NAME: into /tmp/NAME, the first carried of .tcache/NAME, verify-cache (for verify-cache-*), triton-cache
  local carried
  for carried in ".tcache/$1.tar.xz" ".tcache/${1%-[ab]}.tar.xz" .tcache/triton-cache.tar.xz; do
    [ -f "$carried" ] && break
  done
  mkdir -p "/tmp/$1"; [ -f "$carried" ] && tar -xJf "$carried" -C "/tmp/$1"
  return 0
}
use_cache() {  # NAME: point Triton and TileLang at /tmp/NAME/triton-cache
  export TRITON_CACHE_DIR=/tmp/$1/triton-cache TILELANG_CACHE_DIR=/tmp/$1/triton-cache/tilelang
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > /tmp/gpu.txt
started=$SECONDS
# Triton's (and TileLang's) compiled kernels and autotuning results for the next call to carry: built in
# /tmp and moved, so a kill mid-tar never leaves a truncated archive; skipped when over the 16 MiB a
# returned file may have (the carried .tcache then stays the latest one)
save_cache() {  # NAME
  local tmp=/tmp/$1.$BASHPID.tar.xz  # per process: verify2 saves two caches at once
  XZ_OPT=-T0 tar -cJf "$tmp" -C "/tmp/$1" triton-cache 2>/dev/null || return 0
  if [ "$(stat -c %s "$tmp")" -lt 15000000 ]; then mv "$tmp" "$out/$1.tar.xz"
  else echo "$1 $(du -h "$tmp" | cut -f1): too big to bring back"; rm -f "$tmp"; fi
}
limit() { timeout -k 15 "$@"; }  # every step: a hard limit, SIGKILL 15 s after SIGTERM

train_part() {  # STEPS: baseline vs our step (+ profiles), h100_hybrid_sparse, ARC speed, h100_deltanet
  use_cache triton-cache
  # a cold Triton cache costs the first process ~4 minutes of autotuning (docs/gpu-verification.md)
  local warm=0; [ -d /tmp/triton-cache/triton-cache ] && warm=1
  local bench_s=120 train_s=140 steps=${1:-200}; [ "$warm" = 0 ] && { bench_s=280; train_s=100; steps=${1:-100}; }
  limit "$bench_s" python3 bench/bench_train_gpu.py --out /tmp/gpu-runs/profiles --rows h100_deltanet,baseline \
    --modes eager --profile > "$out/bench.txt" 2>&1; echo "bench rc=$? after $((SECONDS - started)) s" >> "$out/bench.txt"
  cat /tmp/gpu.txt >> "$out/bench.txt"
  save_cache triton-cache
  train_preset h100_hybrid_sparse "$train_s" "$steps"
  limit 50 python3 bench/bench_eval.py --run /tmp/gpu-runs/h100_hybrid_sparse --checkpoint final --device cuda \
    --batch-size 64 --data-dir .evaldata --repeats 3 > "$out/eval_bench.txt" 2>&1
  echo "eval rc=$? after $((SECONDS - started)) s" >> "$out/eval_bench.txt"
  [ "$warm" = 1 ] && train_preset h100_deltanet "$train_s" "$steps"
  # runs (without checkpoints) and the profiles travel as one file: a call brings back at most 8
  tar --exclude checkpoints -cJf "$out/runs.tar.xz" -C /tmp gpu-runs 2>/dev/null
  save_cache triton-cache
  grep "^|\|rc=" "$out/bench.txt"
  for preset in h100_hybrid_sparse h100_deltanet; do grep -s "val loss\|throughput\|rc=" "$out/train_$preset.txt" | tail -4; done
  tail -4 "$out/eval_bench.txt"
}
train_preset() {  # PRESET SECONDS STEPS
  limit "$2" python3 -m hybridlm.cli train --preset "$1" --out "/tmp/gpu-runs/$1" --no-progress \
    --set train.max_steps="$3" --set train.eval_interval=50 --set train.eval_batches=5 \
    --set train.log_interval=10 --set train.save_interval=100000 > "$out/train_$1.txt" 2>&1
  echo "train rc=$? after $((SECONDS - started)) s" >> "$out/train_$1.txt"
}
verify_part() {  # SECTIONS (default all): e.g. fla_model,decode,loss,model in one call, op_bf16,op_fp32 in the next.
  # Each section may use all the time left; the cache is saved after each, so the next call resumes
  # from every kernel tuned so far.
  local cache=${vcache:-verify-cache} section left  # verify2 gives each GPU its own cache folder
  use_cache "$cache"
  for section in $(echo "${1:-fla_model,decode,loss,model,op_bf16,op_fp32}" | tr , ' '); do
    left=$((480 - (SECONDS - started))); [ "$left" -lt 30 ] && { echo "$section: skipped, no time left" >> "$out/verify.txt"; continue; }
    echo "== $section" >> "$out/verify.txt"
    limit "$left" python3 -m hybridlm.cli verify --sections "$section" 2>&1 | grep --line-buffered -v TileLang \
      >> "$out/verify.txt"; echo "$section rc=${PIPESTATUS[0]} after $((SECONDS - started)) s" >> "$out/verify.txt"
    save_cache "$cache"
  done
  cat /tmp/gpu.txt >> "$out/verify.txt"
  grep "ok \|FAIL\|rc=\|skipped" "$out/verify.txt"
}

speed_part() {  # ROWS SHAPES MODES: one bench table, the GDN profiles, then verify's compile section
  use_cache triton-cache
  local rows=${1:-baseline,reference,h100_deltanet,h100_deltanet@op,h100_hybrid_sparse,h100_transformer}
  local shapes=${2:-48x1024,3x16384,12x4096} modes=${3:-eager,compiled}
  limit 100 python3 bench/bench_train_gpu.py --out "$out/profiles" --rows h100_deltanet --shapes 48x1024 \
    --modes eager --profile --steps 5 --warmup 2 > "$out/profile_run.txt" 2>&1
  echo "profile rc=$? after $((SECONDS - started)) s" >> "$out/profile_run.txt"; save_cache triton-cache
  limit $((430 - (SECONDS - started))) python3 bench/bench_train_gpu.py --out /tmp/bench --rows "$rows" \
    --shapes "$shapes" --modes "$modes" --budget-s $((380 - (SECONDS - started))) > "$out/bench.txt" 2>&1
  echo "bench rc=$? after $((SECONDS - started)) s" >> "$out/bench.txt"; save_cache triton-cache
  cp /tmp/bench/bench.jsonl "$out/" 2>/dev/null
  limit $((540 - (SECONDS - started))) python3 -m hybridlm.cli verify --sections compile 2>&1 \
    | grep --line-buffered -v TileLang > "$out/verify_compile.txt"
  echo "verify rc=${PIPESTATUS[0]} after $((SECONDS - started)) s" >> "$out/verify_compile.txt"
  cat /tmp/gpu.txt >> "$out/bench.txt"
  grep "rc=" "$out/profile_run.txt"; grep "^|\|rc=" "$out/profile_run.txt" "$out/bench.txt" | cut -c1-160
  grep "ok \|FAIL\|rc=\|opcheck" "$out/verify_compile.txt"
}

one_gpu_parallel() {  # plain, DDP and FSDP2 on one rank (torchrun, NCCL): the same steady tokens/s within 3 %
  local how
  for how in none ddp fsdp; do
    local launch=(python3 -m hybridlm.cli train); [ "$how" != none ] && launch+=(--nproc 1)
    echo "== train.parallel=$how" >> "$out/parallel.txt"
    limit 60 "${launch[@]}" --preset h100_hybrid_sparse --out "/tmp/par-$how" --no-progress --overwrite \
      --set train.parallel="$how" --set train.max_steps=30 --set train.log_interval=10 \
      --set train.eval_interval=100000 --set train.save_interval=100000 >> "$out/parallel.txt" 2>&1
    echo "parallel $how rc=$? after $((SECONDS - started)) s" >> "$out/parallel.txt"
  done
  grep -h "==\|tok/s\|tokens/s\|rc=" "$out/parallel.txt" | tail -15
}
final_part() {
  use_cache triton-cache
  limit 170 python3 bench/bench_train_gpu.py --out /tmp/bench --rows baseline,reference,h100_deltanet,h100_hybrid_sparse,h100_transformer \
    --shapes 48x1024,12x4096,3x16384 --modes eager,auto --steps 6 --warmup 2 --budget-s 145 > "$out/bench.txt" 2>&1
  echo "bench rc=$? after $((SECONDS - started)) s" >> "$out/bench.txt"; cp /tmp/bench/bench.jsonl "$out/"
  limit 130 python3 bench/bench_generate.py --presets h100_deltanet,h100_hybrid_sparse,h100_transformer \
    --windows none --batches 1,32 --prompts 512,4096,32768 --new-tokens 256 --no-cpu-row --budget-s 110 \
    --out /tmp/gen > "$out/generate.txt" 2>&1
  echo "generate rc=$? after $((SECONDS - started)) s" >> "$out/generate.txt"; cp /tmp/gen/*.jsonl "$out/" 2>/dev/null
  one_gpu_parallel
  limit $((560 - (SECONDS - started))) python3 -m hybridlm.cli verify --sections decode,compile 2>&1 \
    | grep --line-buffered -v TileLang > "$out/verify.txt"
  echo "verify rc=${PIPESTATUS[0]} after $((SECONDS - started)) s" >> "$out/verify.txt"
  cat /tmp/gpu.txt >> "$out/bench.txt"
  grep "^|\|rc=" "$out/bench.txt" | cut -c1-150; tail -25 "$out/generate.txt" | cut -c1-150
  grep "ok \|FAIL\|rc=" "$out/verify.txt" | cut -c1-150
}

case "$mode" in
final) unpack_cache triton-cache; final_part ;;
speed) unpack_cache triton-cache; speed_part "$steps" "${3:-}" "${4:-}" ;;
train) unpack_cache triton-cache; train_part "$steps" ;;
verify) unpack_cache verify-cache; verify_part "$steps" ;;
pair)
  unpack_cache triton-cache; unpack_cache verify-cache
  CUDA_VISIBLE_DEVICES=0 verify_part "$steps" > /tmp/verify_part.txt 2>&1 &
  CUDA_VISIBLE_DEVICES=1 train_part > /tmp/train_part.txt 2>&1 &
  wait; cat /tmp/train_part.txt /tmp/verify_part.txt
  ;;
verify2)
  sections_b=${3:?usage: gpu_session.sh verify2 SECTIONS_A SECTIONS_B}
  unpack_cache verify-cache-a; unpack_cache verify-cache-b
  ( out=$out/a vcache=verify-cache-a; mkdir -p "$out"; CUDA_VISIBLE_DEVICES=0 verify_part "$steps" ) \
    > /tmp/verify_a.txt 2>&1 &
  ( out=$out/b vcache=verify-cache-b; mkdir -p "$out"; CUDA_VISIBLE_DEVICES=1 verify_part "$sections_b" ) \
    > /tmp/verify_b.txt 2>&1 &
  wait; cat /tmp/verify_a.txt /tmp/verify_b.txt
  ;;
probe)
  unpack_cache triton-cache; use_cache triton-cache
  limit 120 python3 bench/gpu_grad_probe.py > "$out/probe.txt" 2>&1; echo "probe rc=$?" >> "$out/probe.txt"
  # the bf16 rows print within about a minute; the float32 rows after them need minutes of autotuning
  for section in fla_model:75 model:70; do
    limit "${section#*:}" python3 -m hybridlm.cli verify --sections "${section%:*}" 2>&1 | grep --line-buffered -v TileLang \
      >> "$out/probe.txt"; echo "${section%:*} rc=${PIPESTATUS[0]} after $((SECONDS - started)) s" >> "$out/probe.txt"
  done
  cat /tmp/gpu.txt >> "$out/probe.txt"; grep -v "^\[" "$out/probe.txt" | grep "|\|rc="
  ;;
sweep)
  unpack_cache triton-cache; use_cache triton-cache
  steps=${steps:-100}
  limit 520 python3 -m hybridlm.cli sweep arch --layouts exp7 --steps "$steps" --out /tmp/arch --devices auto \
    --no-progress --set train.eval_interval=50 --set train.eval_batches=5 --set train.save_interval=100000 \
    > "$out/sweep.txt" 2>&1; echo "sweep rc=$? after $((SECONDS - started)) s" >> "$out/sweep.txt"
  cat /tmp/gpu.txt >> "$out/sweep.txt"
  cp /tmp/arch/summary.json /tmp/arch/summary.md /tmp/arch/*.png "$out/" 2>/dev/null
  tar --exclude checkpoints -cJf "$out/members.tar.xz" -C /tmp arch 2>/dev/null
  tail -25 "$out/sweep.txt"
  ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
