"""Maps requests to KV blocks on top of the block pool.

It owns each request's block table and the request's chain of block hashes,
and decides how many new blocks a step needs. It never decides *which*
requests run; that is the scheduler's job.

Full blocks are keyed in the pool when they are allocated for the step that
fills them, not after the step ran. That is safe because every layer writes
the whole batch's new KV before any sequence attends, so a second request of
the same step that hits those keys reads KV written earlier in the same layer.
It is what lets ``n > 1`` samples and identical prompts share blocks at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.engine.block_hash import hash_full_blocks, root_block_hash
from services.engine.block_pool import BlockPool, KVBlock
from services.engine.request import Request


@dataclass
class PrefixCacheStats:
    """Prompt tokens looked up in the prefix cache and how many hit."""

    num_queries: int = 0
    queried_tokens: int = 0
    hit_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class KVCacheManager:
    """Per-request block tables, prefix lookups and block accounting."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        model_fingerprint: str,
        enable_caching: bool = True,
    ) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self.root_hash = root_block_hash(model_fingerprint)
        self.stats = PrefixCacheStats()
        self._req_blocks: dict[str, list[KVBlock]] = {}
        # The same blocks' ids, kept alongside: every step hands each running
        # request's full id list to the runner, and copying a list of ints is
        # ~10x cheaper than rebuilding it from the blocks (~1 ms a step at 256
        # sequences of 2k tokens).
        self._req_block_ids: dict[str, list[int]] = {}
        # How many of a request's leading blocks are already keyed in the pool.
        self._num_keyed: dict[str, int] = {}

    # -- hashes --------------------------------------------------------------

    def update_block_hashes(self, request: Request) -> None:
        """Extend ``request.block_hashes`` to cover every full block of its tokens."""
        have = len(request.block_hashes)
        if (have + 1) * self.block_size > request.num_tokens:
            return
        parent = request.block_hashes[-1] if have else self.root_hash
        start = have * self.block_size
        tokens = request.token_ids_slice(start, request.num_tokens)
        request.block_hashes.extend(hash_full_blocks(tokens, self.block_size, parent))

    # -- lookups -------------------------------------------------------------

    def find_cached_prefix(self, request: Request) -> list[KVBlock]:
        """The longest run of the request's leading blocks already in the cache.

        The last token is never served from cache: the step must compute it to
        get the logits of the next token. Requests asking for prompt logprobs
        need the logits of every prompt position, so they never hit.
        """
        if not self.enable_caching or request.sampling_params.prompt_logprobs is not None:
            return []
        self.update_block_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.pool.lookup(block_hash)
            if block is None:
                break
            hits.append(block)
        self.stats.num_queries += 1
        self.stats.queried_tokens += request.num_tokens
        self.stats.hit_tokens += len(hits) * self.block_size
        return hits

    def block_ids(self, request_id: str) -> list[int]:
        return list(self._req_block_ids.get(request_id, ()))

    # -- allocation ----------------------------------------------------------

    def _num_new_blocks(self, request: Request, num_new_tokens: int, num_hits: int) -> int:
        held = len(self._req_blocks.get(request.request_id, ()))
        total_tokens = request.num_computed_tokens + num_hits * self.block_size + num_new_tokens
        needed = -(-total_tokens // self.block_size)
        return max(0, needed - held - num_hits)

    def can_allocate(
        self, request: Request, num_new_tokens: int, cached_blocks: Sequence[KVBlock] = ()
    ) -> bool:
        """Whether ``allocate`` would succeed without evicting anything in use."""
        # A hit on a free cached block takes it out of the free queue too.
        revived = sum(1 for b in cached_blocks if b.ref_cnt == 0)
        need = self._num_new_blocks(request, num_new_tokens, len(cached_blocks))
        return need + revived <= self.pool.num_free_blocks

    def allocate(
        self, request: Request, num_new_tokens: int, cached_blocks: Sequence[KVBlock] = ()
    ) -> list[int]:
        """Give the request blocks for ``num_new_tokens`` more tokens; returns its block ids.

        ``cached_blocks`` (from :meth:`find_cached_prefix`) are appended first
        and ``request.num_computed_tokens`` moves past them.
        """
        if not self.can_allocate(request, num_new_tokens, cached_blocks):
            raise RuntimeError(f"not enough free KV blocks for request {request.request_id}")
        need = self._num_new_blocks(request, num_new_tokens, len(cached_blocks))
        blocks = self._req_blocks.setdefault(request.request_id, [])
        ids = self._req_block_ids.setdefault(request.request_id, [])
        if cached_blocks:
            self.pool.touch(cached_blocks)
            blocks.extend(cached_blocks)
            ids.extend(b.block_id for b in cached_blocks)
            request.num_computed_tokens += len(cached_blocks) * self.block_size
            self._num_keyed[request.request_id] = len(blocks)
        if need:
            new_blocks = self.pool.allocate(need)
            blocks.extend(new_blocks)
            ids.extend(b.block_id for b in new_blocks)
        self._key_full_blocks(request, request.num_computed_tokens + num_new_tokens)
        return list(ids)

    def _key_full_blocks(self, request: Request, num_tokens_after_step: int) -> None:
        if not self.enable_caching:
            return
        blocks = self._req_blocks[request.request_id]
        num_full = min(num_tokens_after_step // self.block_size, len(blocks))
        start = self._num_keyed.get(request.request_id, 0)
        if num_full <= start:
            return
        self.update_block_hashes(request)
        # A block completed by a pending token (overlap scheduling) is keyed by
        # a later allocation, once that token's id is known.
        num_full = min(num_full, len(request.block_hashes))
        for i in range(start, num_full):
            self.pool.cache_block(blocks[i], request.block_hashes[i])
        self._num_keyed[request.request_id] = num_full

    def free(self, request: Request) -> None:
        """Release every block the request holds, last block first (evicted first)."""
        blocks = self._req_blocks.pop(request.request_id, None)
        self._req_block_ids.pop(request.request_id, None)
        self._num_keyed.pop(request.request_id, None)
        if blocks:
            self.pool.free(reversed(blocks))

    @property
    def num_requests(self) -> int:
        return len(self._req_blocks)
