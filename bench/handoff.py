"""KV handoff cost: from "prefill finished" to "decode admitted", per transport.

For each prompt length and transport: a prefill worker computes the prompt and
publishes its blocks to the kvstore (real gRPC servers on loopback, in this
process); then a decode worker, with an empty local cache, leases the blocks,
pulls them, verifies checksums, releases the lease, writes them into its
paged cache and admits the sequence. The timed span is that pull-and-admit,
which is exactly what a Decode call does before its first step.

    python -m bench.handoff [--model PATH] [--lengths 512 2048] [--repeats 3]

Prints one JSON line per (length, transport) with the median time and MB/s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from bench.common import emit
from services.common.convert import sampling_to_proto
from services.common.grpc_server import channel
from services.engine.config import EngineConfig
from services.engine.sampling_params import SamplingParams
from services.kvstore.server import serve_kvstore
from services.worker.server import WorkerConfig, start_worker
from tandem._proto.tandem.v1 import worker_pb2, worker_pb2_grpc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--transports", nargs="+", default=["grpc", "shm"])
    args = parser.parse_args()

    engine = EngineConfig(model=args.model, max_model_len=max(args.lengths) + 16, num_kv_blocks=1024)
    kvstore = serve_kvstore("127.0.0.1:0", capacity_bytes=8 << 30)
    prefill = start_worker(WorkerConfig(role="prefill", kvstore=kvstore.address, worker_id="bench-prefill", engine=engine))
    decoders = {
        t: start_worker(WorkerConfig(role="decode", kvstore=kvstore.address, kv_transport=t,
                                     worker_id=f"bench-decode-{t}", engine=engine))
        for t in args.transports
    }
    prefill_stub = worker_pb2_grpc.PrefillWorkerStub(channel(prefill.address))
    layout = prefill.worker.blocks.layout
    rng = random.Random(0)
    try:
        for length in args.lengths:
            for transport, decode in decoders.items():
                times, pulled = [], 0
                for repeat in range(args.repeats):
                    prompt = [rng.randrange(100, 40000) for _ in range(length)]
                    request_id = f"bench-{length}-{transport}-{repeat}"
                    prefill_stub.Prefill(worker_pb2.PrefillRequest(
                        request_id=request_id, prompt_token_ids=prompt,
                        sampling=sampling_to_proto(SamplingParams(temperature=0, max_tokens=1)),
                    ), timeout=600)
                    # Prefill finished: every block is in the store. Time the decode side.
                    worker = decode.worker
                    worker.engine.call(lambda e: e.kv_cache.pool.reset_prefix_cache())
                    start = time.perf_counter()
                    fetch = worker.fetch_prefix(request_id, prompt)
                    stream = worker.engine.generate(request_id, prompt, SamplingParams(temperature=0, max_tokens=1))
                    admitted = time.perf_counter()
                    for _ in stream:
                        pass
                    times.append(admitted - start)
                    pulled = fetch.num_pulled_blocks
                    assert fetch.num_missing_blocks == 0 and pulled == (length - 1) // layout.block_size
                megabytes = pulled * layout.payload_bytes / 1e6
                median = statistics.median(times)
                emit("kv_handoff", transport=transport, prompt_tokens=length, blocks=pulled,
                     payload_mb=round(megabytes, 2), handoff_ms=round(median * 1000, 2),
                     mb_per_s=round(megabytes / median, 1), repeats=args.repeats,
                     model=args.model or "SmolLM2-135M-Instruct", kv_dtype=layout.dtype,
                     block_bytes=layout.payload_bytes)
    finally:
        for decode in decoders.values():
            decode.stop()
        prefill.stop()
        kvstore.stop()


if __name__ == "__main__":
    main()
