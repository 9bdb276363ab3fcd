"""Decode attention bandwidth: bytes the kernel must read per second, against a measured copy.

Llama-3.1-8B attention shapes (32 query heads, 8 KV heads, head_dim 128, bf16),
one new token per sequence, batch 1/64/256 at 1k and 4k context, block size 16
and 64. The ceiling is a device-to-device copy measured in the same run
(bytes read + bytes written over its time). Inputs are rotated across enough
cache copies that one timed call never finds its K/V in L2.

Two timings per row: ``time_us`` is do_bench's median of single eager calls
(the engine's path, launch and all); do_bench flushes L2 by zeroing a buffer
before each call, and writing those dirty lines back costs a short kernel up
to ~10 us. ``b2b_time_us`` replays a CUDA graph of 8+ calls back to back over
the rotating input sets (as consecutive layers run), per call: no launch gaps
and no flush between calls.

    python -m bench.attention_bandwidth            # the table, one JSON line per result
    python -m bench.attention_bandwidth --sweep    # launch settings around the rule (where it came from)
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable
from dataclasses import asdict

import torch
import triton
import triton.testing

from bench.common import git_commit
from kernels.attention_metadata import AttentionMetadata
from kernels.triton import paged_attention
from kernels.triton.decode_attention import DecodeConfig, decode_attention, decode_config, partition_size_for

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, DTYPE = 32, 8, 128, torch.bfloat16


def emit(**fields: object) -> None:
    record = {"bench": "attention_bandwidth", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "commit": git_commit(), **fields}
    print(json.dumps(record), flush=True)


def median_ms(fn: Callable[[], object], rep: int = 200) -> float:
    """do_bench's median (it flushes L2 before every timed call); warm-up and rep in ms."""
    return float(triton.testing.do_bench(fn, warmup=rep // 4, rep=rep, return_mode="median"))


def copy_bandwidth_gbps(total_bytes: int = 1 << 32) -> float:
    """Device-to-device copy moving ``total_bytes`` (half read, half written), over its time."""
    src = torch.randn(total_bytes // 8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


class DecodeInputs:
    """``sets`` independent (cache blocks, block table, query) triples in one cache, used round-robin."""

    def __init__(self, batch: int, context: int, block_size: int, l2_bytes: int) -> None:
        blocks_per_seq = triton.cdiv(context, block_size)
        blocks = batch * blocks_per_seq
        self.kv_bytes = 2 * blocks * block_size * NUM_KV_HEADS * HEAD_DIM * DTYPE.itemsize
        self.sets = max(2, min(64, triton.cdiv(4 * l2_bytes, self.kv_bytes)))
        shape = (self.sets * blocks, block_size, NUM_KV_HEADS, HEAD_DIM)
        self.key_cache = torch.randn(shape, device="cuda", dtype=DTYPE)
        self.value_cache = torch.randn(shape, device="cuda", dtype=DTYPE)
        # Scattered block tables, each set over its own range of blocks.
        self.block_tables = [
            (s * blocks + torch.randperm(blocks, device="cuda")).view(batch, blocks_per_seq).to(torch.int32)
            for s in range(self.sets)
        ]
        self.queries = [torch.randn(batch, NUM_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
                        for _ in range(self.sets)]
        self.seq_lens = torch.full((batch,), context, device="cuda", dtype=torch.int32)
        self.query_start_loc = torch.arange(batch + 1, device="cuda", dtype=torch.int32)
        self.out = torch.empty(batch, NUM_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        self.batch, self.context = batch, context
        self.metas = [self._meta(table) for table in self.block_tables]
        self._next = itertools.cycle(range(self.sets))

    def _meta(self, block_tables: torch.Tensor) -> AttentionMetadata:
        """What the engine passes for an all-decode step (the reference-path fields left empty)."""
        empty = torch.empty(0, device="cuda", dtype=torch.int64)
        return AttentionMetadata(
            slot_mapping=empty, block_tables=block_tables, seq_lens=self.seq_lens, context_lens=self.seq_lens - 1,
            query_start_loc=self.query_start_loc, max_seq_len=self.context, max_query_len=1,
            decode_token_index=torch.arange(self.batch, device="cuda"), decode_kv_slots=empty,
            decode_kv_mask=empty.bool(), prefills=[],
        )

    def bytes_read(self) -> int:
        """K and V of every context token once, the queries, the block tables, plus the output written."""
        q_and_out = 2 * self.batch * NUM_HEADS * HEAD_DIM * DTYPE.itemsize
        return self.kv_bytes + q_and_out + self.block_tables[0].numel() * 4

    def engine_call(self) -> None:
        """The backend's paged_attention, as the model calls it."""
        i = next(self._next)
        paged_attention(self.queries[i], self.key_cache, self.value_cache, self.metas[i], HEAD_DIM**-0.5)

    def kernel_call(self, config: DecodeConfig | None, i: int | None = None) -> None:
        i = next(self._next) if i is None else i
        decode_attention(self.queries[i], self.key_cache, self.value_cache, self.block_tables[i], self.seq_lens,
                         self.query_start_loc, self.context, HEAD_DIM**-0.5, self.out, config)

    def graph_ms(self, config: DecodeConfig | None, rep: int = 200) -> float:
        """Per-call time of calls back to back: one CUDA graph cycles through the sets (8 calls at least)."""
        calls = max(8, self.sets)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            self.kernel_call(config, 0)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for i in range(calls):
                self.kernel_call(config, i % self.sets)
        return median_ms(graph.replay, rep) / calls


def run_table(copy_gbps: float, l2_bytes: int) -> None:
    # The small rows are bound by the host's launch path: warm it (and the clocks) first.
    warm = DecodeInputs(1, 1024, 16, l2_bytes)
    median_ms(warm.engine_call, rep=1000)
    del warm
    for block_size, batch, context in itertools.product((16, 64), (1, 64, 256), (1024, 4096)):
        inputs = DecodeInputs(batch, context, block_size, l2_bytes)
        config = decode_config(batch, NUM_KV_HEADS, context, HEAD_DIM, torch.device("cuda"))
        nbytes = inputs.bytes_read()
        ms = median_ms(inputs.engine_call)
        b2b_ms = inputs.graph_ms(None)
        emit(batch=batch, context=context, block_size=block_size, num_heads=NUM_HEADS, num_kv_heads=NUM_KV_HEADS,
             head_dim=HEAD_DIM, dtype=str(DTYPE), rotation_sets=inputs.sets, config=asdict(config),
             bytes=nbytes, copy_gbps=round(copy_gbps, 1),
             time_us=round(ms * 1e3, 2), gbps=round(nbytes / ms / 1e6, 1),
             fraction_of_copy=round(nbytes / ms / 1e6 / copy_gbps, 3),
             b2b_time_us=round(b2b_ms * 1e3, 2), b2b_gbps=round(nbytes / b2b_ms / 1e6, 1),
             b2b_fraction_of_copy=round(nbytes / b2b_ms / 1e6 / copy_gbps, 3),
             # A copy moving as many bytes as the kernel reads: the ceiling at this size.
             same_size_copy_gbps=round(copy_bandwidth_gbps(nbytes), 1))
        del inputs
        torch.cuda.empty_cache()


def run_sweep(copy_gbps: float, l2_bytes: int) -> None:
    """Split count x tile settings around the rule, timed in graphs (launch gaps out)."""
    # (block_n, num_warps, num_stages, maxnreg)
    tiles = [(64, 4, 3, None), (64, 4, 3, 128), (64, 4, 4, None), (32, 4, 4, None), (128, 4, 3, None),
             (64, 8, 3, None)]
    shapes = [(1, 1024), (1, 4096), (16, 1024), (16, 4096), (64, 1024), (64, 4096), (256, 1024)]
    for batch, context in shapes:
        inputs = DecodeInputs(batch, context, 16, l2_bytes)
        rule = decode_config(batch, NUM_KV_HEADS, context, HEAD_DIM, torch.device("cuda"))
        for (block_n, warps, stages, maxnreg), splits in itertools.product(tiles, (1, 2, 4, 8, 16, 32)):
            # As many splits as actually get keys (partitions are whole tiles).
            used = triton.cdiv(context, partition_size_for(context, splits, block_n))
            config = DecodeConfig(block_n, used, warps, stages, maxnreg)
            ms = inputs.graph_ms(config, rep=60)
            emit(sweep=True, batch=batch, context=context, block_size=16, config=asdict(config),
                 rule=asdict(rule), time_us=round(ms * 1e3, 2),
                 fraction_of_copy=round(inputs.bytes_read() / ms / 1e6 / copy_gbps, 3))
        ms = inputs.graph_ms(None, rep=60)
        emit(sweep=True, batch=batch, context=context, block_size=16, config=asdict(rule), rule=asdict(rule),
             is_rule=True, time_us=round(ms * 1e3, 2),
             fraction_of_copy=round(inputs.bytes_read() / ms / 1e6 / copy_gbps, 3))
        del inputs
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
    copy_gbps = copy_bandwidth_gbps()
    emit(measure="device_copy", copy_gbps=round(copy_gbps, 1), l2_bytes=l2_bytes)
    (run_sweep if args.sweep else run_table)(copy_gbps, l2_bytes)


if __name__ == "__main__":
    main()
