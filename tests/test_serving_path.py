"""The serving path's per-token machinery: deltas folded when a hop falls behind, thread pools, registry use.

A hop that finds several deltas of one sample waiting sends them as one
message; the client must still get exactly the tokens, text and logprobs the
engine produced, in order.
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.deltas import coalesce_deltas, merge_token_delta
from services.common.grpc_server import channel, start_grpc_server
from services.decode.servicer import DeltaTracker, newest_snapshots
from services.embedded_mesh import start_embedded_mesh
from services.engine.async_engine import AsyncEngine
from services.engine.config import EngineConfig
from services.engine.engine import LLMEngine
from services.gateway.generation import Generation
from tandem import LLM, SamplingParams
from tandem._proto.tandem.v1 import common_pb2, worker_pb2
from tandem.client import TandemClient
from tandem.client_types import GenerateDelta, TokenLogprob

PARAMS = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=2)


def engine_config(ckpt) -> EngineConfig:
    return EngineConfig(model=str(ckpt), dtype="float32", num_kv_blocks=256, max_model_len=512)


def prompt(seed: int, length: int = 40) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 700) for _ in range(length)]


@pytest.fixture(scope="module")
def offline(tiny_checkpoints) -> LLM:
    return LLM(model=str(tiny_checkpoints["llama"]), dtype="float32", num_kv_blocks=256, max_model_len=512)


@pytest.mark.parametrize("stop", [[], ["e"]], ids=["plain", "stop-string"])
def test_a_decode_stream_read_late_sends_one_delta_with_every_token(tiny_checkpoints, offline, stop):
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=2, stop=stop)
    want = offline.generate([prompt(1)], params)[0].outputs[0]
    engine = AsyncEngine(LLMEngine(engine_config(tiny_checkpoints["llama"]))).start()
    try:
        stream = engine.generate("late", prompt(1), params)
        while not engine.call(lambda e: not e.has_unfinished_requests()):
            time.sleep(0.01)
        tracker = DeltaTracker(params.stop)
        deltas = [d for d in map(tracker.delta, newest_snapshots(stream)) if d is not None]
    finally:
        engine.shutdown()
    assert len(deltas) == 1  # every snapshot was waiting: the newest one carries them all
    assert list(deltas[0].token_ids) == want.token_ids
    assert deltas[0].text == want.text
    assert [lp.token_id for lp in deltas[0].logprobs] == want.token_ids
    assert deltas[0].num_prompt_tokens == len(prompt(1))


def token_delta(ids: list[int], text: str, finish: int = 0, first: bool = False) -> worker_pb2.TokenDelta:
    delta = worker_pb2.TokenDelta(token_ids=ids, text=text, finish_reason=finish,
                                  logprobs=[common_pb2.TokenLogprob(token_id=i, logprob=-1.0) for i in ids])
    if first:
        delta.num_prompt_tokens = 7
    return delta


def test_router_folds_waiting_deltas_per_sample_in_order():
    items = [(0, token_delta([1], "a", first=True)), (1, token_delta([5], "x", first=True)),
             (0, token_delta([2, 3], "bc")), (1, token_delta([6], "y", finish=common_pb2.FINISH_REASON_LENGTH)),
             (1, None), (0, token_delta([4], "d"))]
    deltas, ended, failure = coalesce_deltas(items)
    assert failure is None and ended == 1 and list(deltas) == [0, 1]
    assert list(deltas[0].token_ids) == [1, 2, 3, 4] and deltas[0].text == "abcd"
    assert [lp.token_id for lp in deltas[0].logprobs] == [1, 2, 3, 4]
    assert deltas[0].num_prompt_tokens == 7 and deltas[0].finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED
    assert list(deltas[1].token_ids) == [5, 6] and deltas[1].finish_reason == common_pb2.FINISH_REASON_LENGTH

    error = RuntimeError("worker died")
    deltas, ended, failure = coalesce_deltas([(0, token_delta([1], "a")), (0, error), (0, token_delta([2], "b"))])
    assert failure is error and list(deltas[0].token_ids) == [1]  # what came before the error still goes out

    later = token_delta([9], "z", finish=common_pb2.FINISH_REASON_STOP)
    later.stop_reason = "z"
    into = token_delta([8], "y")
    merge_token_delta(into, later)
    assert into.stop_reason == "z" and into.finish_reason == common_pb2.FINISH_REASON_STOP


class ScriptedClient:
    """An AsyncTandemClient stand-in whose streams have every delta ready at once."""

    def __init__(self, script: dict[int, list[GenerateDelta]]) -> None:
        self.script = script

    async def generate(self, prompt, params, *, request_id: str, add_generation_prompt: bool):
        for delta in self.script[int(request_id.rsplit("-", 1)[1])]:
            yield delta


def gen_delta(index: int, ids: list[int], text: str, finish: str | None = None) -> GenerateDelta:
    return GenerateDelta("r", index, ids, text, [TokenLogprob(i, -0.5, 1) for i in ids], finish, None)


def test_gateway_folds_waiting_deltas_per_prompt_and_sample():
    first = gen_delta(0, [1], "a")
    first.prompt_token_ids, first.num_prompt_tokens = [10, 11], 2
    script = {0: [first, gen_delta(1, [7], "p"), gen_delta(0, [2], "b"), gen_delta(0, [3], "c", "length"),
                  gen_delta(1, [8], "q", "stop")],
              1: [gen_delta(0, [4], "x"), gen_delta(0, [5], "y", "length")]}

    async def run() -> list[tuple[int, GenerateDelta]]:
        generation = Generation(ScriptedClient(script), "req", ["one", "two"], PARAMS)  # type: ignore[arg-type]
        await generation.start()
        await asyncio.sleep(0.01)  # every pump has queued everything
        events = [event async for event in generation.events()]
        assert generation.prompt_info[0].token_ids == [10, 11]
        return events

    events = asyncio.run(run())
    folded: dict[tuple[int, int], GenerateDelta] = {}
    for prompt_index, delta in events:
        key = (prompt_index, delta.index)
        if key in folded:
            folded[key].token_ids += delta.token_ids
            folded[key].text += delta.text
            folded[key].finish_reason = delta.finish_reason
        else:
            folded[key] = delta
    assert len(events) < 7  # some deltas came out folded
    assert folded[(0, 0)].token_ids == [1, 2, 3] and folded[(0, 0)].text == "abc"
    assert folded[(0, 0)].finish_reason == "length"
    assert folded[(0, 1)].token_ids == [7, 8] and folded[(0, 1)].finish_reason == "stop"
    assert folded[(1, 0)].token_ids == [4, 5] and folded[(1, 0)].text == "xy"
    assert [lp.token_id for _, d in events if d.index == 0 for lp in d.logprobs][:3] == [1, 2, 3]


def test_short_calls_are_answered_while_more_streams_are_open_than_the_old_pool():
    # 80 reflection streams each hold a server thread (their handler waits for the
    # next request), more than the 64 threads the pool used to have.
    server = start_grpc_server("127.0.0.1:0", [])
    chan = channel(server.address)
    gates = [queue.SimpleQueue() for _ in range(80)]

    def requests(gate: queue.SimpleQueue):
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        gate.get()

    try:
        reflection = reflection_pb2_grpc.ServerReflectionStub(chan)
        streams = [reflection.ServerReflectionInfo(requests(gate), timeout=30) for gate in gates]
        for stream in streams:
            next(stream)
        reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for gate in gates:
            gate.put(None)
        for stream in streams:
            list(stream)
        chan.close()
        server.stop(grace=None)


def test_colocated_mesh_streams_exact_tokens_without_registry_round_trips(tiny_checkpoints, offline):
    mesh = start_embedded_mesh(engine_config(tiny_checkpoints["llama"]), colocated=True)
    try:
        with TandemClient(mesh.address) as client:
            prompts = [prompt(seed, 70) for seed in range(6)]
            results: dict[int, list[int]] = {}

            def run(i: int) -> None:
                done = client.complete(prompts[i], PARAMS)
                results[i] = done.samples[0].token_ids

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        want = offline.generate(prompts, PARAMS)
        assert [results[i] for i in range(len(prompts))] == [w.outputs[0].token_ids for w in want]
        stats = mesh.router.kvstore.stats()
        # Nothing is ever published in a colocated mesh: no lookups, no leases.
        assert mesh.router.router.metrics.prefix_cache_queries._value.get() == 0
        assert mesh.decode.worker.counters["pulled_blocks"] == 0
        assert stats is not None
    finally:
        mesh.stop()


def test_a_cancelled_single_sample_stream_aborts_on_the_worker(tiny_checkpoints):
    mesh = start_embedded_mesh(engine_config(tiny_checkpoints["llama"]), colocated=True)
    try:
        with TandemClient(mesh.address) as client:
            stream = client.generate(prompt(3), SamplingParams(temperature=0, max_tokens=400, ignore_eos=True))
            next(stream)
            stream.close()  # cancels the call
        engine = mesh.decode.worker.engine
        deadline = time.monotonic() + 10
        while engine.call(lambda e: e.has_unfinished_requests()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not engine.call(lambda e: e.has_unfinished_requests())
        failures = mesh.router.router.metrics.request_failure.labels(grpc.StatusCode.CANCELLED.name)
        assert failures._value.get() == 1
    finally:
        mesh.stop()
