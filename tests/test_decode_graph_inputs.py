"""The host side of CUDA-graph decode steps: batch sizes, padding rows, static layout.

Pure numpy/torch-CPU: the padded static inputs of a decode step must agree
with what ``build_batch_inputs`` gives the eager path on every real row, and
every padding row must point at the scratch block only.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from services.engine.batch_inputs import build_batch_inputs
from services.engine.block_table_rows import BlockTableRows
from services.engine.config import EngineConfig
from services.engine.decode_inputs import (
    DecodeLayout,
    fill_decode_inputs,
    graph_batch_sizes,
    is_decode_only,
    pick_graph_size,
    step_blocks,
)
from services.engine.request import Request
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import ScheduledChunk

BLOCK_SIZE = 16


def test_graph_batch_sizes_cover_every_batch_up_to_the_max():
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(256) == [1, 2, 4, *range(8, 64, 8), *range(64, 257, 16)]
    assert graph_batch_sizes(100)[-2:] == [96, 100]
    assert graph_batch_sizes(400)[-4:] == [320, 352, 384, 400]
    for max_batch in (1, 3, 17, 100, 256, 400):
        sizes = graph_batch_sizes(max_batch)
        assert sizes == sorted(set(sizes)) and sizes[-1] == max_batch
        for batch in range(1, max_batch + 1):
            size = pick_graph_size(sizes, batch)
            assert size is not None and size >= batch
            # The smallest that fits; padding rows stay few next to the real ones.
            assert all(s < batch for s in sizes if s < size)
            assert size - batch <= max(7, batch // 4)
        assert pick_graph_size(sizes, max_batch + 1) is None
    with pytest.raises(ValueError):
        graph_batch_sizes(0)


def test_graph_max_batch_follows_the_config():
    assert EngineConfig().resolved_cuda_graph_max_batch() == 256
    assert EngineConfig(max_num_seqs=40).resolved_cuda_graph_max_batch() == 40
    assert EngineConfig(cuda_graph_max_batch=64).resolved_cuda_graph_max_batch() == 64
    assert EngineConfig(max_num_seqs=8, cuda_graph_max_batch=64).resolved_cuda_graph_max_batch() == 8
    assert EngineConfig(cuda_graphs=False).resolved_cuda_graph_max_batch() == 0


def _decode_chunks(rng: random.Random, count: int, free: list[int]) -> list[ScheduledChunk]:
    """Sequences one token behind, some still on their last prompt token, some decoding outputs."""
    chunks = []
    for i in range(count):
        request = Request(str(i), [rng.randrange(1000) for _ in range(rng.randint(1, 90))], SamplingParams())
        for _ in range(rng.choice([0, 0, 1, 5, 40])):
            request.append_output_token(rng.randrange(1000))
        position = request.num_tokens - 1
        blocks = [free.pop() for _ in range(position // BLOCK_SIZE + 1)]
        chunks.append(ScheduledChunk(request, position, 1, blocks))
    return chunks


@pytest.mark.parametrize("batch", [1, 3, 8, 13])
def test_padded_inputs_match_the_eager_inputs_and_pad_into_the_scratch_block(batch):
    rng = random.Random(batch)
    free = list(range(1000))
    rng.shuffle(free)
    layout = DecodeLayout(max_batch=16, max_blocks=16, block_size=BLOCK_SIZE, scratch_block=1000)
    host64 = np.full(layout.int64_size, -7, dtype=np.int64)
    host32 = np.full(layout.int32_capacity, -7, dtype=np.int32)
    # A wider, stale table from an earlier step must not leak into this one.
    fill_decode_inputs(_decode_chunks(rng, 16, list(free)), 16, 16, layout, host64, host32, BlockTableRows())

    chunks = _decode_chunks(rng, batch, free)
    assert is_decode_only(chunks)
    size = pick_graph_size(graph_batch_sizes(layout.max_batch), batch)
    width = step_blocks(chunks)
    fill_decode_inputs(chunks, size, width, layout, host64, host32, BlockTableRows())
    eager = build_batch_inputs(chunks, BLOCK_SIZE, torch.device("cpu"))
    cap, n = layout.max_batch, batch

    assert host64[:n].tolist() == eager.input_ids.tolist()
    assert host64[cap : cap + n].tolist() == eager.positions.tolist()
    assert host64[2 * cap : 2 * cap + n].tolist() == eager.meta.slot_mapping.tolist()
    assert host32[:n].tolist() == eager.meta.seq_lens.tolist()
    assert host32[cap : cap + n].tolist() == eager.meta.context_lens.tolist()
    table = host32[2 * cap : 2 * cap + size * width].reshape(size, width)
    assert np.array_equal(table[:n], eager.meta.block_tables.numpy())

    # Padding rows: token 0 at position 0, one key, written to and read from the scratch block.
    assert (host64[n:size] == 0).all() and (host64[cap + n : cap + size] == 0).all()
    assert (host64[2 * cap + n : 2 * cap + size] == layout.scratch_block * BLOCK_SIZE).all()
    assert (host32[n:size] == 1).all() and (host32[cap + n : cap + size] == 0).all()
    assert (table[n:, 0] == layout.scratch_block).all()
    # Real rows never name the scratch block.
    assert layout.scratch_block not in table[:n]


def test_mixed_steps_are_not_graph_steps():
    rng = random.Random(0)
    chunks = _decode_chunks(rng, 3, list(range(100)))
    prompt = Request("p", list(range(40)), SamplingParams())
    chunks.append(ScheduledChunk(prompt, 0, 40, [97, 98, 99]))
    assert not is_decode_only(chunks)


def test_fill_rejects_a_batch_larger_than_its_graph():
    layout = DecodeLayout(max_batch=4, max_blocks=8, block_size=BLOCK_SIZE, scratch_block=50)
    chunks = _decode_chunks(random.Random(1), 3, list(range(50)))
    host64, host32 = np.zeros(layout.int64_size, np.int64), np.zeros(layout.int32_capacity, np.int32)
    with pytest.raises(ValueError):
        fill_decode_inputs(chunks, 2, step_blocks(chunks), layout, host64, host32, BlockTableRows())


def test_block_table_rows_grow_and_rebuild_after_preemption():
    rows = BlockTableRows()
    request = Request("r", [1, 2, 3], SamplingParams())
    assert rows.row(request, [5, 9]).tolist() == [5, 9]
    assert rows.row(request, [5, 9, 4]).tolist() == [5, 9, 4]  # the step that crossed a block boundary
    grown = list(range(100))
    grown[:3] = [5, 9, 4]
    assert rows.row(request, grown).tolist() == grown
    # Preempted: its blocks went back to the pool and it was given others.
    request.num_preemptions += 1
    assert rows.row(request, [7]).tolist() == [7]
    assert rows.row(request, [8, 1]).tolist() == [8, 1]  # a different list, same request: no stale row
    table = np.full((3, 4), -1, dtype=np.int32)
    other = Request("s", [1], SamplingParams())
    chunks = [ScheduledChunk(request, 2, 1, [8, 1]), ScheduledChunk(other, 0, 1, [3])]
    rows.scatter(chunks, table)
    assert table.tolist() == [[8, 1, -1, -1], [3, -1, -1, -1], [-1, -1, -1, -1]]
