#!/usr/bin/env bash
# The OpenAI-compatible API of `tandem serve` with curl. Usage: examples/curl.sh [BASE_URL]
# Add -H "Authorization: Bearer $KEY" when the server runs with --api-key.
set -euo pipefail
BASE=${1:-http://127.0.0.1:8000}

curl -s "$BASE/health"; echo
curl -s "$BASE/v1/models"; echo

curl -s "$BASE/v1/chat/completions" -H "Content-Type: application/json" -d '{
  "model": "SmolLM2-135M-Instruct",
  "messages": [{"role": "user", "content": "What is the capital of France?"}],
  "max_tokens": 32,
  "temperature": 0
}'; echo

# Server-sent events, ending with "data: [DONE]".
curl -sN "$BASE/v1/completions" -H "Content-Type: application/json" -d '{
  "model": "SmolLM2-135M-Instruct",
  "prompt": "Once upon a time",
  "max_tokens": 16,
  "stream": true,
  "stream_options": {"include_usage": true}
}'

curl -s "$BASE/metrics" | grep '^tandem:' | head -20
