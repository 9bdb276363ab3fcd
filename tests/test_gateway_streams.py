"""Many concurrent streams, and clients that go away: the mesh must free everything they held."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from openai import AsyncOpenAI

from tests.gateway_harness import API_KEY, MODEL, Served
from tests.mesh_harness import wait_until

pytestmark = pytest.mark.timeout(180)
RUNNING = ("tandem:num_requests_running", ())
KV_USAGE = ("tandem:kv_cache_usage_perc", ())
CANCELLED = ("tandem:request_failure_total", (("code", "CANCELLED"),))


def idle(served: Served) -> bool:
    metrics = served.metrics()
    return metrics[RUNNING] == 0 and metrics[KV_USAGE] == 0


def test_fifty_concurrent_streams_all_complete(served):
    async def run() -> list[tuple[str | None, int]]:
        aclient = AsyncOpenAI(base_url=f"{served.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)

        async def one(i: int) -> tuple[str | None, int]:
            kwargs = {"model": MODEL, "max_tokens": 8, "temperature": 0.7, "seed": i, "stream": True,
                      "stream_options": {"include_usage": True}, "extra_body": {"ignore_eos": True}}
            if i % 2:
                stream = await aclient.chat.completions.create(messages=[{"role": "user", "content": f"n {i}"}],
                                                               **kwargs)
            else:
                stream = await aclient.completions.create(prompt=f"Story number {i}:", **kwargs)
            finish, usage = None, 0
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
                if chunk.usage:
                    usage = chunk.usage.completion_tokens
            return finish, usage

        try:
            return await asyncio.gather(*(one(i) for i in range(50)))
        finally:
            await aclient.close()

    results = asyncio.run(run())
    assert results == [("length", 8)] * 50
    assert wait_until(lambda: idle(served), timeout=10)


def test_a_dropped_stream_frees_its_blocks(served):
    cancelled_before = served.metrics().get(CANCELLED, 0.0)
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 240, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        # Worker loads are polled a few times a second: the usage shows up shortly.
        assert wait_until(lambda: served.metrics()[KV_USAGE] > 0, timeout=5, interval=0.05)
        assert served.metrics()[RUNNING] == 1
    # The connection is closed mid-stream: the router call is cancelled and every
    # worker aborts the request, so its blocks return to the pools.
    assert wait_until(lambda: idle(served), timeout=10)
    assert served.metrics()[CANCELLED] == cancelled_before + 1


def test_a_client_that_times_out_cancels_a_non_streamed_request(served):
    cancelled_before = served.metrics().get(CANCELLED, 0.0)
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 240, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        served.post("/v1/completions", body, timeout=0.3)
    assert wait_until(lambda: served.metrics()[CANCELLED] == cancelled_before + 1, timeout=10)
    assert wait_until(lambda: idle(served), timeout=10)
