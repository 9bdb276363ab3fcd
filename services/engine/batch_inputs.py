"""Turns a scheduled step into the flat tensors one forward pass consumes.

Everything is computed on the host with numpy (a step's index arithmetic is a
few thousand integers: far cheaper there than as a dozen tiny device ops),
then moved in one copy per dtype through :class:`HostStaging` when one is
given. The per-token slot views (``decode_kv_slots``, ``prefills[i].kv_slots``)
serve only backends that attend through slots (the torch reference); backends
that read ``block_tables`` skip them with ``slot_views=False``, which on a long
context saves building and copying a [decodes, max_len] index every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kernels.attention_metadata import AttentionMetadata, PrefillSequence
from services.engine.block_table_rows import BlockTableRows
from services.engine.host_staging import HostStaging
from services.engine.scheduler import ScheduledChunk


@dataclass
class BatchInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    # Flat index of the last token of each chunk that samples, in chunk order.
    sample_token_index: torch.Tensor  # [S] int64


@dataclass
class _HostBatch:
    """The step's index arrays on the host, before they move to the device."""

    input_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    slot_mapping: np.ndarray  # [T] int64
    decode_token_index: np.ndarray  # [Bd] int64
    sample_token_index: np.ndarray  # [S] int64
    block_tables: np.ndarray  # [B, max_blocks] int32, padded with 0
    seq_lens: np.ndarray  # [B] int32
    context_lens: np.ndarray  # [B] int32
    query_start_loc: np.ndarray  # [B + 1] int32
    query_lens: np.ndarray  # [B] int64


def _host_batch(chunks: list[ScheduledChunk], block_size: int, rows: BlockTableRows) -> _HostBatch:
    num_seqs = len(chunks)
    ctx = np.fromiter((c.num_computed_before for c in chunks), np.int64, num_seqs)
    qlen = np.fromiter((c.num_new_tokens for c in chunks), np.int64, num_seqs)
    block_tables = np.zeros((num_seqs, max(len(c.block_ids) for c in chunks)), dtype=np.int32)
    rows.scatter(chunks, block_tables)
    token_ids: list[int] = []
    for chunk in chunks:
        start = chunk.num_computed_before
        known = chunk.request.token_ids_slice(start, start + chunk.num_new_tokens)
        token_ids.extend(known)
        # A token the step in flight is still sampling: a placeholder the runner fills on the device.
        token_ids.extend([0] * (chunk.num_new_tokens - len(known)))

    query_start_loc = np.zeros(num_seqs + 1, dtype=np.int64)
    np.cumsum(qlen, out=query_start_loc[1:])
    num_tokens = int(query_start_loc[-1])
    # Position of every new token: its sequence's context length plus its offset in the chunk.
    seq_of_token = np.repeat(np.arange(num_seqs), qlen)
    positions = ctx[seq_of_token] + np.arange(num_tokens) - query_start_loc[:-1][seq_of_token]
    blocks_of_token = block_tables[seq_of_token, positions // block_size].astype(np.int64)
    samples = np.fromiter((c.samples for c in chunks), np.bool_, num_seqs)
    return _HostBatch(
        input_ids=np.asarray(token_ids, dtype=np.int64),
        positions=positions,
        slot_mapping=blocks_of_token * block_size + positions % block_size,
        decode_token_index=query_start_loc[:-1][qlen == 1],
        sample_token_index=query_start_loc[1:][samples] - 1,
        block_tables=block_tables,
        seq_lens=(ctx + qlen).astype(np.int32),
        context_lens=ctx.astype(np.int32),
        query_start_loc=query_start_loc.astype(np.int32),
        query_lens=qlen,
    )


def _slot_views(
    host: _HostBatch, block_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[PrefillSequence]]:
    """Decode key slots and mask, and each prompt chunk's slots: the reference backend's inputs."""
    block_tables = torch.from_numpy(host.block_tables).to(torch.int64)
    seq_lens = torch.from_numpy(host.seq_lens).to(torch.int64)
    is_decode = torch.from_numpy(host.query_lens == 1)
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
    prefills = []
    for i in torch.nonzero(~is_decode).flatten().tolist():
        pos = torch.arange(int(seq_lens[i]))
        slots = block_tables[i][pos // block_size] * block_size + pos % block_size
        prefills.append(_prefill(host, i, slots.to(device)))
    return decode_kv_slots.to(device), decode_kv_mask.to(device), prefills


def _prefill(host: _HostBatch, seq: int, kv_slots: torch.Tensor | None) -> PrefillSequence:
    return PrefillSequence(
        token_start=int(host.query_start_loc[seq]),
        num_tokens=int(host.query_lens[seq]),
        context_len=int(host.context_lens[seq]),
        kv_slots=kv_slots,
    )


def build_batch_inputs(
    chunks: list[ScheduledChunk],
    block_size: int,
    device: torch.device,
    *,
    slot_views: bool = True,
    staging: HostStaging | None = None,
    rows: BlockTableRows | None = None,
) -> BatchInputs:
    """Flatten the step's chunks (in order) into token ids, positions and attention metadata.

    ``slot_views=False`` leaves ``decode_kv_slots``/``decode_kv_mask`` empty and
    ``PrefillSequence.kv_slots`` None (for backends that read block tables).
    ``staging`` (CUDA only) moves the arrays in one pinned, non-blocking copy
    per dtype; without it each array is copied on its own. ``rows`` keeps each
    request's block ids as an array across steps (the runner passes its own).
    """
    host = _host_batch(chunks, block_size, rows if rows is not None else BlockTableRows())
    int64_arrays = [host.input_ids, host.positions, host.slot_mapping, host.decode_token_index,
                    host.sample_token_index]
    int32_arrays = [host.block_tables, host.seq_lens, host.context_lens, host.query_start_loc]
    if staging is not None:
        input_ids, positions, slot_mapping, decode_token_index, sample_token_index = staging.upload(
            torch.int64, int64_arrays
        )
        block_tables, seq_lens, context_lens, query_start_loc = staging.upload(torch.int32, int32_arrays)
    else:
        input_ids, positions, slot_mapping, decode_token_index, sample_token_index = (
            torch.from_numpy(a).to(device) for a in int64_arrays
        )
        block_tables, seq_lens, context_lens, query_start_loc = (
            torch.from_numpy(a).to(device) for a in int32_arrays
        )

    if slot_views:
        decode_kv_slots, decode_kv_mask, prefills = _slot_views(host, block_size, device)
    else:
        decode_kv_slots = torch.empty(0, 0, dtype=torch.int64, device=device)
        decode_kv_mask = torch.empty(0, 1, 1, 0, dtype=torch.bool, device=device)
        prefills = [_prefill(host, i, None) for i in np.flatnonzero(host.query_lens != 1).tolist()]

    meta = AttentionMetadata(
        slot_mapping=slot_mapping,
        block_tables=block_tables,
        seq_lens=seq_lens,
        context_lens=context_lens,
        query_start_loc=query_start_loc,
        max_seq_len=int(host.seq_lens.max()),
        max_query_len=int(host.query_lens.max()),
        decode_token_index=decode_token_index,
        decode_kv_slots=decode_kv_slots,
        decode_kv_mask=decode_kv_mask,
        prefills=prefills,
    )
    return BatchInputs(
        input_ids=input_ids, positions=positions, meta=meta, sample_token_index=sample_token_index
    )
