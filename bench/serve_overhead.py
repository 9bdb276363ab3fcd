"""The serving path's host overhead on CPU, hop by hop, with a model small enough not to matter.

A child process runs what ``tandem serve --colocated`` runs (kvstore, one
worker in both roles, router, gateway) on a tiny random Llama; this process
drives it at four entry points, each one hop further from the engine:

    engine   AsyncEngine.generate on a thread of the child (no RPC)
    worker   DecodeWorker.Decode over gRPC
    router   Router.Generate over gRPC (tandem.client)
    gateway  POST /v1/completions, streamed (SSE)

and prints one JSON line per result: ``ttft`` (low load: one request at a
time; the cold one is the first request the fresh server answers), and
``stream`` (``--concurrency`` streams of ``--output-len`` tokens at once:
tokens/s, the child's CPU time per token, messages per token).

    python -m bench.serve_overhead [--model PATH] [--concurrency 64 256] [--output-len 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LEVELS = ("engine", "worker", "router", "gateway")
SERVED_NAME = "tiny"


# -- the child: the mesh and the engine-level driver ------------------------------------


def serve_child(model: str) -> None:
    import torch

    from services.embedded_mesh import start_embedded_mesh
    from services.engine.config import EngineConfig
    from services.engine.sampling_params import SamplingParams
    from services.gateway.app import build_app
    from services.gateway.server import start_gateway_thread

    torch.set_num_threads(1)
    mesh = start_embedded_mesh(EngineConfig(model=model, dtype="float32", num_kv_blocks=16384, max_model_len=2048),
                               served_model_names=[SERVED_NAME], colocated=True)
    app = build_app(mesh.address, mesh.router.servicer.tokenizer, [SERVED_NAME])
    gateway = start_gateway_thread(app, "127.0.0.1", 0)
    print(json.dumps({"gateway": gateway.url, "router": mesh.address, "worker": mesh.decode.address}), flush=True)
    engine = mesh.decode.worker.engine
    ids = iter(range(1 << 62))

    def one(prompt: list[int], tokens: int, ttft: list[float]) -> None:
        params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
        start = time.perf_counter()
        for output in engine.generate(f"engine-{next(ids)}", prompt, params):
            if not ttft:
                ttft.append(time.perf_counter() - start)

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        threads, ttfts = [], []
        for prompt in cmd["prompts"]:
            ttfts.append([])
            threads.append(threading.Thread(target=one, args=(prompt, cmd["tokens"], ttfts[-1])))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(json.dumps({"ttft": [t[0] for t in ttfts], "messages": cmd["tokens"] * len(threads)}), flush=True)
    gateway.stop()
    mesh.stop()


# -- the driver ----------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Driver:
    def __init__(self, child: subprocess.Popen, addresses: dict[str, str]) -> None:
        self.child = child
        self.addresses = addresses
        self.request_ids = iter(range(1 << 62))

    def _child(self, cmd: dict) -> dict:
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write(json.dumps(cmd) + "\n")
        self.child.stdin.flush()
        return json.loads(self.child.stdout.readline())

    async def _one(self, level: str, prompt: list[int], tokens: int, clients: dict) -> tuple[float, int]:
        """(time to first token, messages) of one streamed request at ``level``."""
        from services.common.convert import sampling_to_proto
        from services.engine.sampling_params import SamplingParams
        from tandem._proto.tandem.v1 import worker_pb2

        params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
        start = time.perf_counter()
        ttft, messages = 0.0, 0
        if level == "worker":
            request = worker_pb2.DecodeRequest(request_id=f"bench-{next(self.request_ids)}", prompt_token_ids=prompt,
                                               sampling=sampling_to_proto(params))
            stream = clients["worker"].Decode(request)
        elif level == "router":
            stream = clients["router"].generate(prompt, params)
        else:
            stream = self._sse(clients["http"], prompt, tokens)
        async for _ in stream:
            messages += 1
            ttft = ttft or time.perf_counter() - start
        return ttft, messages

    async def _sse(self, http, prompt: list[int], tokens: int):
        body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                "stream": True}
        async with http.stream("POST", "/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    yield line

    async def run(self, level: str, prompts: list[list[int]], tokens: int) -> tuple[list[float], int]:
        """Every prompt at once; (each one's time to first token, messages received)."""
        if level == "engine":
            reply = await asyncio.to_thread(self._child, {"op": "engine", "prompts": prompts, "tokens": tokens})
            return reply["ttft"], reply["messages"]
        import grpc
        import httpx

        from services.common.grpc_server import GRPC_OPTIONS
        from tandem._proto.tandem.v1 import worker_pb2_grpc
        from tandem.client import AsyncTandemClient

        channel = grpc.aio.insecure_channel(self.addresses["worker"], options=GRPC_OPTIONS)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        clients = {"worker": worker_pb2_grpc.DecodeWorkerStub(channel),
                   "router": AsyncTandemClient(self.addresses["router"]),
                   "http": httpx.AsyncClient(base_url=self.addresses["gateway"], timeout=600, limits=limits)}
        try:
            results = await asyncio.gather(*(self._one(level, p, tokens, clients) for p in prompts))
        finally:
            await channel.close()
            await clients["router"].close()
            await clients["http"].aclose()
        return [r[0] for r in results], sum(r[1] for r in results)

    def measure(self, level: str, prompts: list[list[int]], tokens: int) -> dict:
        cpu, start = process_cpu_s(self.child.pid), time.perf_counter()
        ttfts, messages = asyncio.run(self.run(level, prompts, tokens))
        wall, cpu = time.perf_counter() - start, process_cpu_s(self.child.pid) - cpu
        generated = tokens * len(prompts)
        return {"ttft": ttfts, "messages": messages, "wall_s": wall, "cpu_s": cpu, "tokens": generated}


def build_model(folder: Path) -> str:
    from tests.fixtures.tiny_models import build_tiny_checkpoint

    return str(build_tiny_checkpoint("llama", folder, max_position_embeddings=2048))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint to serve (default: a tiny random Llama built here)")
    parser.add_argument("--serve-child", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=LEVELS)
    parser.add_argument("--prompt-len", type=int, default=512, help="TTFT prompt length")
    parser.add_argument("--ttft-requests", type=int, default=20)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--stream-prompt-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    args = parser.parse_args()
    if args.serve_child:
        serve_child(args.serve_child)
        return
    from bench.common import emit

    rng = random.Random(0)

    def prompts(count: int, length: int) -> list[list[int]]:
        return [[rng.randrange(3, 700) for _ in range(length)] for _ in range(count)]

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_model(Path(tmp) / "tiny-llama")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "bench.serve_overhead", "--serve-child", model],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert child.stdout is not None
            driver = Driver(child, json.loads(child.stdout.readline()))
            startup_s = time.perf_counter() - started
            # The first request the fresh server answers (the client library is warmed on the router level).
            asyncio.run(driver.run("router", prompts(1, 8), 1))
            cold = driver.measure("gateway", prompts(1, args.prompt_len), 4)
            emit("serve_overhead.cold", level="gateway", prompt_len=args.prompt_len, startup_s=round(startup_s, 2),
                 first_ttft_ms=round(cold["ttft"][0] * 1e3, 2))
            for level in args.levels:
                driver.measure(level, prompts(3, args.prompt_len), 4)
                ttfts = [driver.measure(level, prompts(1, args.prompt_len), 4)["ttft"][0] * 1e3
                         for _ in range(args.ttft_requests)]
                emit("serve_overhead.ttft", level=level, prompt_len=args.prompt_len, requests=len(ttfts),
                     p50_ms=round(statistics.median(ttfts), 2), min_ms=round(min(ttfts), 2))
            for concurrency in args.concurrency:
                for level in args.levels:
                    driver.measure(level, prompts(8, args.stream_prompt_len), 8)
                    r = driver.measure(level, prompts(concurrency, args.stream_prompt_len), args.output_len)
                    emit("serve_overhead.stream", level=level, concurrency=concurrency, output_len=args.output_len,
                         tokens_per_s=round(r["tokens"] / r["wall_s"]),
                         cpu_us_per_token=round(r["cpu_s"] / r["tokens"] * 1e6, 1),
                         messages_per_token=round(r["messages"] / r["tokens"], 3),
                         ttft_p50_ms=round(statistics.median(r["ttft"]) * 1e3, 1))
        finally:
            if child.poll() is None:
                assert child.stdin is not None
                child.stdin.write('{"op": "quit"}\n')
                child.stdin.flush()
            child.wait(60)


if __name__ == "__main__":
    main()
