"""The backend's ``paged_attention``: decode rows and prompt chunks of one step, no host sync.

The decode kernel takes every sequence with one new token and the prefill
kernel every sequence with more; each skips the other's sequences on the
device, so a mixed batch needs no gather of its rows. Either launch is left
out when the step has none of its kind (known on the host from the metadata).
"""

from __future__ import annotations

import torch

from kernels.attention_metadata import AttentionMetadata
from kernels.triton.decode_attention import decode_attention
from kernels.triton.prefill_attention import prefill_attention


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """query: [T, Hq, D]; caches: [num_blocks, block_size, Hkv, D] with this step's K/V
    already written. Returns [T, Hq, D]; see :func:`kernels.reference.paged_attention`."""
    if query.stride(-1) != 1:
        query = query.contiguous()
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if meta.num_decodes:
        decode_attention(query, key_cache, value_cache, meta.block_tables, meta.seq_lens,
                         meta.query_start_loc, meta.max_seq_len, scale, out)
    if meta.prefills:
        prefill_attention(query, key_cache, value_cache, meta.block_tables, meta.seq_lens,
                          meta.query_start_loc, [p.num_tokens for p in meta.prefills], scale, out)
    return out
