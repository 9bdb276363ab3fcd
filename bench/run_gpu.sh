#!/usr/bin/env bash
# Runs GPU benchmarks on the device machine: bash bench/run_gpu.sh MODULE [ARGS...]
# Installs carried wheels (.whl/, e.g. gguf) into /tmp/site, then runs the module
# with its JSON lines teed into $OUT/<module>.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
module="$1"; shift
out="${OUT:-/tmp}/${module##*.}.jsonl"
python3 -m "$module" "$@" 2>&1 | tee -a "${OUT:-/tmp}/log.txt" | grep --line-buffered '^{' | tee -a "$out"
