#!/usr/bin/env bash
# Runs GPU benchmarks on the device machine: bash bench/run_gpu.sh MODULE [ARGS...]
# Installs carried wheels (.whl/, e.g. gguf) into /tmp/site, then runs the module
# with its JSON lines teed into $OUT/<module>.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
module="$1"; shift
out="${OUT:-/tmp}/${module##*.}.jsonl"
python3 -m "$module" "$@" 2>&1 | tee -a "${OUT:-/tmp}/log.txt" | grep --line-buffered '^{' | tee -a "$out"
