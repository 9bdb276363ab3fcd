"""Decode steps padded to a captured batch size: which size, and the static inputs' layout.

A CUDA graph replays fixed kernels on fixed addresses, so a decode step of
``n`` sequences runs the graph of the smallest captured size ``g >= n``, with
its inputs copied into static buffers. Rows ``n..g`` are padding: each is a
one-token sequence at position 0 whose key/value go to the *scratch block*, a
cache block the block pool never hands out, and which attends over that one
key only. So padding rows compute finite garbage nobody reads and never touch
a request's cache.

Everything here is host-side numpy, shared by the graph runner and its tests.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.engine.block_table_rows import BlockTableRows
from services.engine.scheduler import ScheduledChunk

# (up to, step): 1, 2, 4, then every 8 rows to 64, every 16 to 256, every 32
# beyond. Small batches read the weights once whatever their size, so padding
# there is nearly free; near 256 rows the GEMMs approach the compute roof and a
# padded row costs about a real one, so the steps keep padding under ~1/8.
_SIZE_STEPS = ((64, 8), (256, 16))
_STEP_BEYOND = 32


def graph_batch_sizes(max_batch: int) -> list[int]:
    """Captured batch sizes, ascending, up to and including ``max_batch``."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = [1, 2, 4]
    for limit, step in _SIZE_STEPS:
        sizes.extend(range((sizes[-1] // step + 1) * step, limit + 1, step))
    while sizes[-1] < max_batch:
        sizes.append(sizes[-1] + _STEP_BEYOND)
    return [s for s in sizes if s < max_batch] + [max_batch]


def pick_graph_size(sizes: Sequence[int], batch: int) -> int | None:
    """The smallest of the ascending ``sizes`` that holds ``batch`` rows; None if none does."""
    i = bisect.bisect_left(sizes, batch)
    return sizes[i] if i < len(sizes) else None


def is_decode_only(chunks: Sequence[ScheduledChunk]) -> bool:
    """Every chunk computes exactly one token: the shape graphs are captured for."""
    return all(c.num_new_tokens == 1 for c in chunks)


@dataclass(frozen=True)
class DecodeLayout:
    """Where the static inputs live in the two flat staging buffers (host and device alike).

    int64 buffer: ``[input_ids | positions | slot_mapping]``, ``max_batch`` each.
    int32 buffer: ``[seq_lens | context_lens | block table]``, the first two
    ``max_batch`` each, then a step's ``[graph_size, step_blocks]`` block table,
    which :class:`DecodeGraphs` copies into the static ``[max_batch, max_blocks]`` one.
    """

    max_batch: int
    max_blocks: int  # per sequence: cdiv(max_model_len, block_size)
    block_size: int
    scratch_block: int  # the cache block no request owns

    @property
    def int64_size(self) -> int:
        return 3 * self.max_batch

    @property
    def int32_capacity(self) -> int:
        return 2 * self.max_batch + self.max_batch * self.max_blocks

    def int32_size(self, graph_size: int, step_blocks: int) -> int:
        return 2 * self.max_batch + graph_size * step_blocks

    @property
    def max_seq_len(self) -> int:
        """The longest sequence a block-table row can describe: the graphs' attention bound."""
        return self.max_blocks * self.block_size


def step_blocks(chunks: Sequence[ScheduledChunk]) -> int:
    """Width of the step's block table: the most blocks any of its sequences holds."""
    return max(len(c.block_ids) for c in chunks)


def fill_decode_inputs(
    chunks: Sequence[ScheduledChunk],
    graph_size: int,
    width: int,
    layout: DecodeLayout,
    host64: np.ndarray,
    host32: np.ndarray,
    rows: BlockTableRows,
) -> None:
    """Write a decode step, padded to ``graph_size`` rows, into the staging arrays.

    ``width`` is the block-table width (:func:`step_blocks`); ``host64`` and
    ``host32`` hold at least ``layout.int64_size`` and
    ``layout.int32_size(graph_size, width)`` elements.
    """
    n, cap, bs = len(chunks), layout.max_batch, layout.block_size
    if not 0 < n <= graph_size <= cap:
        raise ValueError(f"{n} sequences do not fit a graph of {graph_size} (max {cap})")
    # One pass over the chunks for the per-row scalars (this loop is the step's
    # host cost at large batches; everything after it is vectorised).
    token_list, position_list, block_list = [], [], []
    for chunk in chunks:
        position = chunk.num_computed_before
        token_list.append(_token_at(chunk))
        position_list.append(position)
        # The token's block: the one holding its position.
        block_list.append(chunk.block_ids[position // bs])
    positions = np.array(position_list, dtype=np.int64)
    scratch_slot = layout.scratch_block * bs

    host64[0:n] = token_list
    host64[n:graph_size] = 0
    host64[cap : cap + n] = positions
    host64[cap + n : cap + graph_size] = 0
    host64[2 * cap : 2 * cap + n] = np.array(block_list, dtype=np.int64) * bs + positions % bs
    host64[2 * cap + n : 2 * cap + graph_size] = scratch_slot

    host32[0:n] = positions + 1  # seq_lens: the new token included
    host32[n:graph_size] = 1
    host32[cap : cap + n] = positions
    host32[cap + n : cap + graph_size] = 0
    table = host32[2 * cap : 2 * cap + graph_size * width].reshape(graph_size, width)
    table.fill(0)
    rows.scatter(chunks, table)
    table[n:, 0] = layout.scratch_block


def _token_at(chunk: ScheduledChunk) -> int:
    """The one token a decode chunk computes (usually the request's last output token).

    A token still being sampled by the step in flight is a placeholder 0 here;
    the runner writes its id on the device.
    """
    request, position = chunk.request, chunk.num_computed_before
    prompt_len = len(request.prompt_token_ids)
    if position < prompt_len:
        return request.prompt_token_ids[position]
    outputs = request.output_token_ids
    return outputs[position - prompt_len] if position - prompt_len < len(outputs) else 0
