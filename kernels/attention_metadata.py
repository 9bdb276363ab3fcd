"""What one step's attention needs to know about the batch, built once per step.

The flat batch holds ``T`` new tokens from ``B`` sequences. Sequence ``i`` owns
tokens ``query_start_loc[i] : query_start_loc[i+1]``; before this step it had
``context_lens[i]`` tokens in the cache, and after it ``seq_lens[i]``.
The reference backend attends through per-token cache *slots*
(``block_id * block_size + offset``); GPU kernels read ``block_tables`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefillSequence:
    """A sequence computing more than one token this step (a prompt chunk)."""

    token_start: int  # first of its tokens in the flat batch
    num_tokens: int  # new tokens this step
    context_len: int  # tokens already cached before this step
    # [context_len + num_tokens] int64 cache slots; None where the step was built
    # for a backend that reads block_tables instead (see build_batch_inputs).
    kv_slots: torch.Tensor | None


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: cache slot each new token's K/V is written to
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with 0
    seq_lens: torch.Tensor  # [B] int32, tokens in cache after this step
    context_lens: torch.Tensor  # [B] int32, tokens in cache before this step
    query_start_loc: torch.Tensor  # [B + 1] int32
    max_seq_len: int
    max_query_len: int
    decode_token_index: torch.Tensor  # [Bd] int64: flat index of each decode token
    # Reference-path views, grouped so decodes run as one batched call; empty
    # ([0, 0]) when built for a backend that reads block_tables.
    decode_kv_slots: torch.Tensor  # [Bd, Lmax] int64, padded with 0
    decode_kv_mask: torch.Tensor  # [Bd, 1, 1, Lmax] bool, True where a key is real
    prefills: list[PrefillSequence]

    @property
    def num_decodes(self) -> int:
        return int(self.decode_token_index.numel())
