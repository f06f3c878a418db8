#!/usr/bin/env bash
# One device call that gathers the GPU evidence of docs/gpu-verification.md, in priority order, each
# step under its own time limit so one slow step cannot eat the rest. Logs land in $OUT.
# Run from the repo root on the device machine, with .device (FLA site) and .whl (tomli_w) carried:
#   bash bench/gpu_session.sh [PROBE_S] [VERIFY_S] [BENCH_S] [STEPS]
set -u
probe_s=${1:-150}; verify_s=${2:-200}; bench_s=${3:-220}; steps=${4:-100}
out=${OUT:-/tmp/out}; mkdir -p "$out"
mkdir -p /tmp/site && tar -xJf .device/fla-h100-site.tar.xz -C /tmp/site
python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HYBRIDLM_CACHE=/tmp/hcache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt"
python3 -m hybridlm.cli doctor > "$out/doctor.txt" 2>&1
TRITON_PRINT_AUTOTUNING=1 timeout "$probe_s" python3 bench/gpu_step_probe.py --preset h100_deltanet --steps 8 \
  > "$out/probe.txt" 2>&1; echo "probe rc=$?" >> "$out/probe.txt"
timeout "$verify_s" python3 -m hybridlm.cli verify --sections fla_model,decode,model,op 2>&1 | grep -v TileLang \
  > "$out/verify.txt"; echo "verify rc=${PIPESTATUS[0]}" >> "$out/verify.txt"
timeout "$bench_s" python3 bench/bench_gpu_train.py --out "$out/train" --steps "$steps" --baseline-steps 20 \
  > "$out/bench.txt" 2>&1; echo "bench rc=$?" >> "$out/bench.txt"
grep -h "step \|rc=" "$out/probe.txt" | tail -12
cat "$out/verify.txt" | tail -30
grep -v "TileLang\|^  \|^    " "$out/bench.txt" | tail -12
