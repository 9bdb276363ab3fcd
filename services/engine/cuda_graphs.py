"""Decode steps as CUDA graphs: capture per batch size at start-up, replay per step.

An eager decode step of a 32-layer model is ~400 kernel launches whose host
cost (Python, torch dispatch, Triton's launcher) exceeds the GPU time at small
batches. A captured graph replays all of them with one launch. The model
forward (embedding to final norm) is captured once per size of
:func:`graph_batch_sizes`; logits and sampling stay eager, on the real rows
only (one GEMM and the sampler, whose work depends on the requests).

A replay reads static buffers. Per step the host writes the padded inputs
(:mod:`services.engine.decode_inputs`) into pinned staging, and three copies
move them: the int64 and int32 staging to the device in one copy each, then
the step's block table into the static table (whose row stride the graph baked
in). Kernel grids must not depend on data: the attention kernel gets
``max_seq_len`` = the longest sequence a block-table row describes, so its
split count is the worst case's and each sequence splits its own keys.

All graphs share one memory pool, captured largest first so the smaller ones
reuse its intermediates. That is safe because graphs never run concurrently
and a graph's output is read only before the next replay of any graph.

Off CUDA (tests), the same buffers feed an uncaptured forward.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from kernels.attention_metadata import AttentionMetadata
from services.engine.block_table_rows import BlockTableRows
from services.engine.decode_inputs import (
    DecodeLayout,
    fill_decode_inputs,
    graph_batch_sizes,
    pick_graph_size,
    step_blocks,
)
from services.engine.graph_blas import graph_blas_library, preferred_blas
from services.engine.host_staging import HostStaging
from services.engine.models.decoder import DecoderLM, DecoderShape, KVCache
from services.engine.scheduler import ScheduledChunk

logger = logging.getLogger(__name__)


def capture_memory_estimate(shape: DecoderShape, max_batch: int, dtype: torch.dtype) -> int:
    """Device bytes to set aside for the graphs before sizing the KV cache.

    The pool holds the largest graph's live activations (residual stream,
    q/k/v, the MLP's gate|up and activation) and every graph's output rows;
    on top come cuBLAS workspaces and the graphs themselves, a fixed cost.
    Measured on an H200 for a Llama-3.1-8B shape and 23 sizes up to 256 rows:
    292 MiB (bench/RESULTS.md), which this bound (~440 MiB there) covers.
    """
    elem = torch.empty((), dtype=dtype).element_size()
    qkv = (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim
    per_token = (6 * shape.hidden_size + 3 * shape.intermediate_size + 2 * qkv) * elem
    outputs = sum(graph_batch_sizes(max_batch)) * shape.hidden_size * elem
    return 4 * max_batch * per_token + outputs + (256 << 20)


class DecodeGraphs:
    """Static inputs, one captured forward per batch size, and the per-step copy-in."""

    def __init__(
        self,
        model: DecoderLM,
        kv_caches: list[KVCache],
        layout: DecodeLayout,
        device: torch.device,
        rows: BlockTableRows | None = None,
    ) -> None:
        self.model = model
        self._rows = rows if rows is not None else BlockTableRows()
        self.kv_caches = kv_caches
        self.layout = layout
        self.device = device
        self.sizes = graph_batch_sizes(layout.max_batch)
        cap = layout.max_batch
        self._int64 = torch.zeros(layout.int64_size, dtype=torch.int64, device=device)
        self._int32 = torch.zeros(layout.int32_capacity, dtype=torch.int32, device=device)
        self._block_tables = torch.zeros(cap, layout.max_blocks, dtype=torch.int32, device=device)
        # Every row is one token, so these never change.
        self._query_start_loc = torch.arange(cap + 1, dtype=torch.int32, device=device)
        self._decode_token_index = torch.arange(cap, dtype=torch.int64, device=device)
        self._no_slots = torch.empty(0, 0, dtype=torch.int64, device=device)
        self._no_mask = torch.empty(0, 1, 1, 0, dtype=torch.bool, device=device)
        self._staging = HostStaging(device) if device.type == "cuda" else None
        self._plain64 = np.zeros(layout.int64_size, dtype=np.int64)
        self._plain32 = np.zeros(layout.int32_capacity, dtype=np.int32)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        # What the last capture took, for logs and benchmarks.
        self.capture_seconds = 0.0
        self.capture_bytes = 0

    def fits(self, batch: int) -> bool:
        return pick_graph_size(self.sizes, batch) is not None

    @property
    def captured(self) -> bool:
        return bool(self._graphs)

    # -- capture -------------------------------------------------------------

    @torch.inference_mode()
    def capture(self) -> int:
        """Capture every size (largest first, one shared pool); returns the pool's bytes."""
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        started = time.perf_counter()
        # All-padding inputs: warm-up runs write and read only the scratch block.
        self._stage([], self.layout.max_batch)
        torch.cuda.synchronize(self.device)
        free_before = torch.cuda.mem_get_info(self.device)[0]
        pool = torch.cuda.graph_pool_handle()
        for size in sorted(self.sizes, reverse=True):
            with preferred_blas(graph_blas_library(size)):
                # The eager run compiles this size's Triton variants and lets cuBLAS
                # pick its kernels, neither of which may happen inside a capture.
                self._forward(size)
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    self._outputs[size] = self._forward(size)
            self._graphs[size] = graph
        torch.cuda.synchronize(self.device)
        self.capture_bytes = free_before - torch.cuda.mem_get_info(self.device)[0]
        self.capture_seconds = time.perf_counter() - started
        logger.info("captured %d decode CUDA graphs (batch %d..%d) in %.1f s, %.0f MiB", len(self.sizes),
                    self.sizes[0], self.sizes[-1], self.capture_seconds, self.capture_bytes / 2**20)
        return self.capture_bytes

    # -- one step --------------------------------------------------------------

    @torch.inference_mode()
    def run(
        self,
        chunks: Sequence[ScheduledChunk],
        fill_input_ids: Callable[[torch.Tensor], object] | None = None,
    ) -> torch.Tensor:
        """Hidden states [n, hidden] of a decode step's ``n`` tokens (a view, valid until the next run).

        ``fill_input_ids``, when given, writes on the device the input ids the
        host left as placeholders (tokens a step still in flight samples).
        """
        size = pick_graph_size(self.sizes, len(chunks))
        if size is None:
            raise ValueError(f"no graph holds a batch of {len(chunks)} (largest {self.sizes[-1]})")
        self._stage(chunks, size)
        if fill_input_ids is not None:
            fill_input_ids(self._int64[:size])
        graph = self._graphs.get(size)
        if graph is None:  # not captured (off CUDA): the same buffers, run eagerly
            return self._forward(size)[: len(chunks)]
        graph.replay()
        return self._outputs[size][: len(chunks)]

    def _stage(self, chunks: Sequence[ScheduledChunk], size: int) -> None:
        """Write the padded step into staging and copy it into the static buffers."""
        layout = self.layout
        width = step_blocks(chunks) if chunks else 1
        int32_size = layout.int32_size(size, width)
        if self._staging is not None:
            host64 = self._staging.host_buffer(torch.int64, layout.int64_size)
            host32 = self._staging.host_buffer(torch.int32, layout.int32_capacity)
        else:
            host64, host32 = self._plain64, self._plain32
        if chunks:
            fill_decode_inputs(chunks, size, width, layout, host64, host32, self._rows)
        else:
            _fill_all_padding(layout, host64, host32)
        if self._staging is not None:
            self._staging.copy_to(torch.int64, layout.int64_size, self._int64)
            self._staging.copy_to(torch.int32, int32_size, self._int32[:int32_size])
        else:
            self._int64.copy_(torch.from_numpy(host64))
            self._int32[:int32_size].copy_(torch.from_numpy(host32[:int32_size]))
        table = self._int32[2 * layout.max_batch : int32_size].view(size, width)
        self._block_tables[:size, :width].copy_(table)

    def _forward(self, size: int) -> torch.Tensor:
        cap = self.layout.max_batch
        meta = AttentionMetadata(
            slot_mapping=self._int64[2 * cap : 2 * cap + size],
            block_tables=self._block_tables[:size],
            seq_lens=self._int32[:size],
            context_lens=self._int32[cap : cap + size],
            query_start_loc=self._query_start_loc[: size + 1],
            max_seq_len=self.layout.max_seq_len,
            max_query_len=1,
            decode_token_index=self._decode_token_index[:size],
            decode_kv_slots=self._no_slots,
            decode_kv_mask=self._no_mask,
            prefills=[],
        )
        return self.model(self._int64[:size], self._int64[cap : cap + size], self.kv_caches, meta)


def _fill_all_padding(layout: DecodeLayout, host64: np.ndarray, host32: np.ndarray) -> None:
    """Every row a padding row (for warm-up and capture)."""
    cap = layout.max_batch
    host64[: 2 * cap] = 0
    host64[2 * cap : 3 * cap] = layout.scratch_block * layout.block_size
    host32[:cap] = 1
    host32[cap : 2 * cap] = 0
    host32[2 * cap : 3 * cap] = layout.scratch_block  # a [max_batch, 1] table
