#!/usr/bin/env bash
# The README's first command: set up, then train the cpu_demo hybrid on the embedded corpus,
# print a results table and sample text, and leave plots in runs/cpu_demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hybridlm demo "$@"
