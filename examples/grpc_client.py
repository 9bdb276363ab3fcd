"""Talk to a tandem router over gRPC with the typed client.

    tandem serve &                      # router gRPC on 127.0.0.1:50051, HTTP on :8000
    python3 examples/grpc_client.py [ROUTER_ADDRESS]
"""

from __future__ import annotations

import sys

from tandem import SamplingParams
from tandem.client import TandemClient, TandemRpcError


def main(address: str) -> int:
    with TandemClient(address, timeout=120) as client:
        if not client.health():
            print(f"the router at {address} cannot serve yet", file=sys.stderr)
            return 1
        print("models:", [m.id for m in client.list_models()])

        # Stream a completion token by token.
        for delta in client.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=16)):
            print(delta.text, end="", flush=True)
        print()

        # A chat request, collected whole; two samples with a seed.
        done = client.complete(
            [{"role": "user", "content": "Name three rivers of Europe."}],
            SamplingParams(n=2, temperature=0.8, seed=7, max_tokens=48),
        )
        for sample in done.samples:
            print(f"[{sample.index}] ({sample.finish_reason}) {sample.text}")
        print(f"{len(done.prompt_token_ids)} prompt tokens, {done.num_generated_tokens} generated")

        try:
            client.complete("hello", SamplingParams(max_tokens=1), model="no-such-model")
        except TandemRpcError as error:
            print("as expected:", error.code.name, error.message)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"))
