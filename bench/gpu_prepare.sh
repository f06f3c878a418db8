#!/usr/bin/env bash
# Run here (not on the device) before the first device call of a session: puts what bench/gpu_session.sh
# needs into git-ignored folders that the `run` tool carries (carry: .device .whl .evaldata .tcache).
#   .device/   FLA 0.6.0 + TileLang site folder for the device image (from ../shared/device)
#   .whl/      wheels the device image lacks (tomli_w, for writing config.toml)
#   .evaldata/ the full ARC-Challenge test set (from ../shared/data/eval), for GPU scoring speed
#   .tcache/   Triton caches brought back by earlier calls (kept if present; never created here)
set -eu
cd "$(dirname "$0")/.."
for dir in .device .whl .evaldata .tcache; do
  grep -qx "/$dir/" .git/info/exclude || echo "/$dir/" >> .git/info/exclude
done
mkdir -p .device .whl .evaldata
[ -f .device/fla-h100-site.tar.xz ] || cp ../shared/device/fla-h100-site.tar.xz .device/
ls .whl/tomli_w-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: -d .whl tomli_w
ls .whl/xxhash-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl xxhash
[ -f .evaldata/arc_challenge_test.jsonl.gz ] || cp ../shared/data/eval/arc_challenge_test.jsonl.gz .evaldata/
du -sh .device .whl .evaldata .tcache 2>/dev/null
