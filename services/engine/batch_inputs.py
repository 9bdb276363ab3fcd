"""Turns a scheduled step into the flat tensors one forward pass consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.attention_metadata import AttentionMetadata, PrefillSequence
from services.engine.scheduler import ScheduledChunk


@dataclass
class BatchInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    # Flat index of the last token of each chunk that samples, in chunk order.
    sample_token_index: torch.Tensor  # [S] int64


def _slots(block_table: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cache slot of each position: ``block_table[p // bs] * bs + p % bs``."""
    return block_table[positions // block_size] * block_size + positions % block_size


def build_batch_inputs(
    chunks: list[ScheduledChunk], block_size: int, device: torch.device
) -> BatchInputs:
    """Flatten the step's chunks (in order) into token ids, positions and attention metadata."""
    num_seqs = len(chunks)
    max_blocks = max(len(c.block_ids) for c in chunks)
    block_tables = torch.zeros(num_seqs, max_blocks, dtype=torch.int64)
    token_ids: list[int] = []
    context_lens: list[int] = []
    query_lens: list[int] = []
    for i, chunk in enumerate(chunks):
        block_tables[i, : len(chunk.block_ids)] = torch.tensor(chunk.block_ids, dtype=torch.int64)
        start = chunk.num_computed_before
        token_ids.extend(chunk.request.token_ids_slice(start, start + chunk.num_new_tokens))
        context_lens.append(start)
        query_lens.append(chunk.num_new_tokens)

    ctx = torch.tensor(context_lens, dtype=torch.int64)
    qlen = torch.tensor(query_lens, dtype=torch.int64)
    seq_lens = ctx + qlen
    query_start_loc = torch.zeros(num_seqs + 1, dtype=torch.int64)
    torch.cumsum(qlen, 0, out=query_start_loc[1:])
    num_tokens = int(query_start_loc[-1])
    # Position of every new token: its sequence's context length plus its offset in the chunk.
    seq_of_token = torch.repeat_interleave(torch.arange(num_seqs), qlen)
    positions = ctx[seq_of_token] + torch.arange(num_tokens) - query_start_loc[:-1][seq_of_token]
    slot_mapping = _slots_batched(block_tables, seq_of_token, positions, block_size)

    is_decode = qlen == 1
    decode_seqs = torch.nonzero(is_decode).flatten()
    max_decode_len = int(seq_lens[decode_seqs].max()) if len(decode_seqs) else 0
    decode_lens = seq_lens[decode_seqs][:, None]
    # Padding keys repeat the sequence's last real slot: masked out, but never
    # uninitialised cache memory (whose NaNs would survive a zero weight).
    key_pos = torch.minimum(torch.arange(max_decode_len)[None, :], decode_lens - 1)
    decode_kv_slots = (
        block_tables[decode_seqs].gather(1, key_pos // block_size) * block_size + key_pos % block_size
    )
    decode_kv_mask = (torch.arange(max_decode_len)[None, :] < decode_lens)[:, None, None, :]

    prefills = [
        PrefillSequence(
            token_start=int(query_start_loc[i]),
            num_tokens=query_lens[i],
            context_len=context_lens[i],
            kv_slots=_slots(block_tables[i], torch.arange(int(seq_lens[i])), block_size).to(device),
        )
        for i in torch.nonzero(~is_decode).flatten().tolist()
    ]
    sample_index = [int(query_start_loc[i + 1]) - 1 for i, c in enumerate(chunks) if c.samples]

    meta = AttentionMetadata(
        slot_mapping=slot_mapping.to(device),
        block_tables=block_tables.to(device=device, dtype=torch.int32),
        seq_lens=seq_lens.to(device=device, dtype=torch.int32),
        context_lens=ctx.to(device=device, dtype=torch.int32),
        query_start_loc=query_start_loc.to(device=device, dtype=torch.int32),
        max_seq_len=int(seq_lens.max()),
        max_query_len=int(qlen.max()),
        decode_token_index=query_start_loc[:-1][decode_seqs].to(device),
        decode_kv_slots=decode_kv_slots.to(device),
        decode_kv_mask=decode_kv_mask.to(device),
        prefills=prefills,
    )
    return BatchInputs(
        input_ids=torch.tensor(token_ids, dtype=torch.int64, device=device),
        positions=positions.to(device),
        meta=meta,
        sample_token_index=torch.tensor(sample_index, dtype=torch.int64, device=device),
    )


def _slots_batched(
    block_tables: torch.Tensor, seq_of_token: torch.Tensor, positions: torch.Tensor, block_size: int
) -> torch.Tensor:
    block_ids = block_tables[seq_of_token, positions // block_size]
    return block_ids * block_size + positions % block_size
