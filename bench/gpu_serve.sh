#!/usr/bin/env bash
# Serving benchmark on the GPU machine: `tandem serve` on a Llama-3.1-8B-shaped model with random
# bf16 weights, then bench.serve against its OpenAI API. JSON lines go to $OUT/serve.jsonl.
#   bash bench/gpu_serve.sh              (prefill and decode workers, KV handed over through the kvstore)
#   SERVE_FLAGS=--colocated bash bench/gpu_serve.sh    (one worker in both roles)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
out="${OUT:-/tmp}"
model=/tmp/llama-3.1-8b-shape
python3 -c "from pathlib import Path; from bench.real_shapes import write_model_folder; write_model_folder(Path('$model'))"
python3 -m tandem.cli serve --model "$model" --load-format dummy --dtype bfloat16 --max-model-len 4096 \
  --served-model-name llama-8b-shape --port 8000 --listen 127.0.0.1:0 --kv-cache-memory-fraction 0.4 ${SERVE_FLAGS:-} \
  > "$out/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 240); do grep -q "HTTP API listening" "$out/serve.log" && break; kill -0 $server 2>/dev/null || { tail -20 "$out/serve.log"; exit 1; }; sleep 1; done
run() { python3 -m bench.serve --model llama-8b-shape --vocab-size 128000 "$@" 2>&1 | grep '^{' \
  | sed "s/^{/{\"serve_flags\": \"${SERVE_FLAGS:-}\", /" | tee -a "$out/serve.jsonl"; }
# Low load: time to first token of a 512-token prompt (target: 25 ms or less).
run --dataset random --input-len 512 --output-len 16 --num-prompts 20 --request-rate 2
# Throughput under load.
run --dataset random --input-len 512 --output-len 128 --num-prompts 200 --request-rate 8
run --dataset random --input-len 512 --output-len 128 --num-prompts 400 --request-rate inf
kill $server; wait $server 2>/dev/null
tail -5 "$out/serve.log"
