"""The mesh as separate OS processes on loopback: 1 kvstore, 2 prefill, 2 decode, 1 router.

Greedy output through the mesh must equal HF transformers and the offline
engine; prefix reuse must show in the kvstore and prefill counters; cancels and
dead workers must leave no lease or block behind.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tandem import LLM, SamplingParams
from tests.fixtures.hf_oracle import hf_greedy, make_prompts
from tests.mesh_harness import MeshClient, ServiceProcess, start_service, wait_until, worker_load

pytestmark = pytest.mark.timeout(600)
ENGINE_FLAGS = ["--dtype", "float32", "--num-kv-blocks", "256", "--max-model-len", "512"]


@pytest.fixture(scope="module")
def mesh(tiny_checkpoints, tmp_path_factory):
    ckpt = str(tiny_checkpoints["llama"])
    logs = tmp_path_factory.mktemp("mesh-logs")
    procs: dict[str, ServiceProcess] = {}
    try:
        procs["kvstore"] = start_service("kvstore", ["kvstore", "--listen", "127.0.0.1:0"], logs)
        kv = procs["kvstore"].address
        for role in ("prefill", "decode"):
            for i in range(2):
                name = f"{role}-{i}"
                procs[name] = start_service(name, [role, "--model", ckpt, "--kvstore", kv, "--worker-id", name,
                                                   "--listen", "127.0.0.1:0", *ENGINE_FLAGS], logs)
        procs["router"] = start_service("router", ["router", "--model", ckpt, "--kvstore", kv,
                                                   "--listen", "127.0.0.1:0", "--disagg-min-tokens", "16"], logs)
        client = MeshClient(procs["router"].address, kv)
        assert wait_until(lambda: _ready(client), timeout=60)
        yield procs, client
    finally:
        for proc in procs.values():
            proc.stop()


def _ready(client: MeshClient) -> bool:
    try:
        client.generate([5, 6, 7], SamplingParams(temperature=0, max_tokens=1))
        return True
    except grpc.RpcError:
        return False


def no_leaks(procs, client) -> bool:
    loads = [worker_load(procs[n].address, n.split("-")[0]) for n in procs if n.startswith(("prefill", "decode"))
             if procs[n].proc.poll() is None]
    return client.stats().num_leases == 0 and all(
        l.num_running == 0 and l.num_waiting == 0 and l.num_free_kv_blocks == l.num_total_kv_blocks for l in loads
    )


def test_greedy_through_the_mesh_equals_hf_and_offline(mesh, tiny_checkpoints):
    procs, client = mesh
    ckpt = tiny_checkpoints["llama"]
    llm = LLM(model=str(ckpt), dtype="float32", num_kv_blocks=256, max_model_len=512)
    prompts = make_prompts(llm.tokenizer, 8, random.Random(21), min_len=3, max_len=150)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: client.generate(p, params)[0], prompts))
    assert got == hf_greedy(ckpt, prompts, 10)
    assert got == [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    loads = [worker_load(procs[f"prefill-{i}"].address, "prefill") for i in range(2)]
    assert sum(l.published_blocks for l in loads) > 0  # long prompts went through prefill workers
    assert wait_until(lambda: no_leaks(procs, client))


def test_prefix_reuse_prefills_only_the_suffix(mesh, tiny_checkpoints):
    procs, client = mesh
    rng = random.Random(5)
    shared = [rng.randrange(3, 700) for _ in range(96)]  # 6 full blocks
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    client.generate(shared + [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27], params)
    before_stats = client.stats()
    before = [worker_load(procs[f"prefill-{i}"].address, "prefill") for i in range(2)]
    suffix = [rng.randrange(3, 700) for _ in range(40)]
    client.generate(shared + suffix, params)
    after_stats = client.stats()
    after = [worker_load(procs[f"prefill-{i}"].address, "prefill") for i in range(2)]
    computed = sum(a.prefill_computed_tokens - b.prefill_computed_tokens for a, b in zip(after, before))
    cached = sum(a.prefill_cached_tokens - b.prefill_cached_tokens for a, b in zip(after, before))
    assert cached == 96 and computed == len(suffix)
    assert after_stats.lookup_hit_blocks - before_stats.lookup_hit_blocks >= 6


def test_one_hundred_concurrent_requests_complete(mesh):
    procs, client = mesh
    rng = random.Random(9)
    prompts = [[rng.randrange(3, 700) for _ in range(rng.randrange(4, 60))] for _ in range(100)]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(lambda p: client.generate(p, params)[0], prompts))
    assert all(len(r) == 6 for r in results)
    assert wait_until(lambda: no_leaks(procs, client))


def test_cancel_mid_stream_releases_everything(mesh):
    procs, client = mesh
    stream = client.stream(list(range(10, 80)), SamplingParams(temperature=0, max_tokens=400, ignore_eos=True))
    received = 0
    for response in stream:
        received += len(response.delta.token_ids)
        if received >= 3:
            break
    stream.cancel()
    assert wait_until(lambda: no_leaks(procs, client), timeout=20)


def test_mismatched_worker_is_refused_at_registration(mesh, tiny_checkpoints, tmp_path):
    procs, _ = mesh
    flags = [f for f in ENGINE_FLAGS] + ["--block-size", "32"]
    bad = start_service("bad-decode", ["decode", "--model", str(tiny_checkpoints["llama"]), "--kvstore",
                                       procs["kvstore"].address, *flags], tmp_path, expect_failure=True)
    assert bad.proc.returncode != 0
    output = "".join(bad.lines)
    assert "block_size" in output and "16" in output and "32" in output


def test_killed_decode_worker_fails_the_stream_promptly_and_leaks_nothing(mesh):
    procs, client = mesh
    stream = client.stream(list(range(10, 60)), SamplingParams(temperature=0, max_tokens=400, ignore_eos=True))
    next(stream)
    busy = [n for n in ("decode-0", "decode-1") if worker_load(procs[n].address, "decode").num_running > 0]
    assert len(busy) == 1
    started = time.monotonic()
    procs[busy[0]].kill()
    with pytest.raises(grpc.RpcError) as err:
        for _ in stream:
            pass
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 10
    assert wait_until(lambda: client.stats().num_leases == 0, timeout=40)
    # The dead worker leaves rotation: every later request lands on the survivor.
    assert wait_until(lambda: _ready(client), timeout=30)
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    assert all(len(client.generate(list(range(i, i + 20)), params)[0]) == 3 for i in range(5, 15))


def test_without_prefill_workers_decode_prefills_itself(mesh, tiny_checkpoints):
    procs, client = mesh
    for name in ("prefill-0", "prefill-1"):
        procs[name].kill()
    p = list(range(100, 190))
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    assert wait_until(lambda: _ready(client), timeout=30)
    assert client.generate(p, params)[0] == hf_greedy(tiny_checkpoints["llama"], [p], 6)[0]
