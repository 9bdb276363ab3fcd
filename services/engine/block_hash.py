"""The content address of a KV block: one function every service imports.

A block's key is a chained sha256 over a fixed byte encoding:

    root        = sha256(b"tandem.kv.v1\\0" + model_fingerprint)
    key(block)  = sha256(parent_key + n_tokens:u32le + token_ids:u32le[n_tokens])

where ``parent_key`` is the key of the previous block of the same sequence
(``root`` for the first block). Because the fingerprint seeds the chain, two
processes compute the same key for the same tokens only when they run the same
model with the same KV-relevant settings, and a key identifies the whole prefix,
not just the block's own tokens. The encoding is explicit (little-endian u32),
so it never depends on Python's ``hash`` randomisation or pickle.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

BlockHash = bytes  # 32 raw sha256 bytes

_DOMAIN = b"tandem.kv.v1\0"


def root_block_hash(model_fingerprint: str) -> BlockHash:
    """The parent key of a sequence's first block, for one model fingerprint."""
    return hashlib.sha256(_DOMAIN + model_fingerprint.encode("utf-8")).digest()


def hash_block_tokens(parent_hash: BlockHash, token_ids: Sequence[int]) -> BlockHash:
    """The key of one block given its parent's key and its own token ids."""
    payload = struct.pack(f"<I{len(token_ids)}I", len(token_ids), *token_ids)
    return hashlib.sha256(parent_hash + payload).digest()


def hash_full_blocks(
    token_ids: Sequence[int], block_size: int, parent_hash: BlockHash
) -> list[BlockHash]:
    """Keys of every *full* block of ``token_ids``, chained from ``parent_hash``.

    ``parent_hash`` is :func:`root_block_hash` for a sequence's start, or the
    key of the block just before ``token_ids[0]`` to extend an existing chain
    without rehashing it. A trailing partial block gets no key: only full
    blocks are ever shared.
    """
    hashes: list[BlockHash] = []
    parent = parent_hash
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block_tokens(parent, token_ids[start : start + block_size])
        hashes.append(parent)
    return hashes
