"""Use the official openai package against `tandem serve`.

    tandem serve &
    python3 -m pip install openai
    python3 examples/openai_client.py [BASE_URL]
"""

from __future__ import annotations

import sys

from openai import OpenAI


def main(base_url: str) -> None:
    # Any key works unless the server was started with --api-key.
    client = OpenAI(base_url=base_url, api_key="unused")
    model = client.models.list().data[0].id

    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=32,
        temperature=0,
    )
    print(reply.choices[0].message.content, reply.usage)

    # Streaming, with the usage in a last chunk.
    stream = client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=32, stream=True, stream_options={"include_usage": True},
        extra_body={"top_k": 40, "repetition_penalty": 1.1},  # vLLM's extra sampling parameters
    )
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].text, end="", flush=True)
        elif chunk.usage:
            print(f"\n{chunk.usage}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1")
