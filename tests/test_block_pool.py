"""Block pool and KV cache manager: exact block ids, ref-counts and eviction order."""

from services.engine.block_hash import hash_block_tokens, hash_full_blocks, root_block_hash
from services.engine.block_pool import BlockPool
from services.engine.kv_cache_manager import KVCacheManager
from services.engine.request import Request
from services.engine.sampling_params import SamplingParams

BLOCK = 4
FP = "test-model"


def make_request(request_id: str, tokens: list[int], **params) -> Request:
    return Request(request_id, list(tokens), SamplingParams(temperature=0.0, **params))


def test_hash_chain_is_fixed_and_chained():
    root = root_block_hash(FP)
    hashes = hash_full_blocks(list(range(10)), BLOCK, root)
    assert len(hashes) == 2  # the trailing partial block has no key
    assert hashes[0] == hash_block_tokens(root, [0, 1, 2, 3])
    assert hashes[1] == hash_block_tokens(hashes[0], [4, 5, 6, 7])
    # Same tokens under another parent (another prefix) give another key.
    assert hash_block_tokens(root, [4, 5, 6, 7]) != hashes[1]
    # Another model fingerprint gives another chain.
    assert hash_full_blocks(list(range(8)), BLOCK, root_block_hash("other")) != hashes
    # The encoding is fixed: this digest must never change across versions/processes.
    assert hash_block_tokens(b"\0" * 32, [1, 2]).hex()[:16] == _expected_prefix()


def _expected_prefix() -> str:
    import hashlib
    import struct

    return hashlib.sha256(b"\0" * 32 + struct.pack("<III", 2, 1, 2)).hexdigest()[:16]


def test_pool_allocates_in_order_and_frees_to_lru_tail():
    pool = BlockPool(6)
    a = pool.allocate(2)
    b = pool.allocate(3)
    assert [x.block_id for x in a] == [0, 1]
    assert [x.block_id for x in b] == [2, 3, 4]
    assert pool.free_block_ids() == [5]
    pool.free(reversed(b))
    pool.free(reversed(a))
    # Freed tail-first: each request's last block is evicted before its first.
    assert pool.free_block_ids() == [5, 4, 3, 2, 1, 0]


def test_cached_free_block_is_revived_by_touch_and_evicted_by_allocate():
    pool = BlockPool(3)
    (blk,) = pool.allocate(1)
    pool.cache_block(blk, b"h" * 32)
    pool.free([blk])
    assert pool.lookup(b"h" * 32) is blk and blk.ref_cnt == 0
    pool.touch([blk])
    assert blk.ref_cnt == 1 and 0 not in pool.free_block_ids()
    pool.free([blk])
    # Order now: 1, 2, 0 -> allocating three evicts block 0's key last.
    got = pool.allocate(3)
    assert [x.block_id for x in got] == [1, 2, 0]
    assert pool.lookup(b"h" * 32) is None
    assert pool.num_evictions == 1


def test_manager_allocates_exact_blocks_and_hits_prefix():
    kv = KVCacheManager(num_blocks=10, block_size=BLOCK, model_fingerprint=FP)
    r1 = make_request("a", range(10))  # 2 full blocks + 2 tokens
    assert kv.find_cached_prefix(r1) == []
    assert kv.allocate(r1, 10) == [0, 1, 2]
    r1.num_computed_tokens = 10

    # Same first 8 tokens: both full blocks hit; the rest gets fresh blocks.
    r2 = make_request("b", list(range(8)) + [99, 98, 97])
    hits = kv.find_cached_prefix(r2)
    assert [b.block_id for b in hits] == [0, 1]
    assert kv.allocate(r2, 3, hits) == [0, 1, 3]
    assert r2.num_computed_tokens == 8
    assert kv.pool.blocks[0].ref_cnt == 2
    assert kv.stats.hit_tokens == 8 and kv.stats.queried_tokens == 21

    kv.free(r1)
    kv.free(r2)
    # a's tail (2) when a is freed; then b's tail (3) and the shared blocks,
    # whose count only reaches zero with b, last block first.
    assert kv.pool.free_block_ids()[-4:] == [2, 3, 1, 0]
    assert kv.pool.num_free_blocks == 10


def test_full_prompt_hit_still_recomputes_last_token():
    kv = KVCacheManager(num_blocks=8, block_size=BLOCK, model_fingerprint=FP)
    r1 = make_request("a", range(8))
    kv.allocate(r1, 8)
    kv.free(r1)
    r2 = make_request("b", range(8))
    # 8 tokens = 2 full blocks, but the last token must run to give logits: 1 block hit.
    assert [b.block_id for b in kv.find_cached_prefix(r2)] == [0]


def test_prompt_logprobs_requests_never_hit():
    kv = KVCacheManager(num_blocks=8, block_size=BLOCK, model_fingerprint=FP)
    r1 = make_request("a", range(9))
    kv.allocate(r1, 9)
    r2 = make_request("b", range(9), prompt_logprobs=1)
    assert kv.find_cached_prefix(r2) == []


def test_can_allocate_counts_revived_hits():
    kv = KVCacheManager(num_blocks=3, block_size=BLOCK, model_fingerprint=FP)
    r1 = make_request("a", range(8))
    kv.allocate(r1, 8)
    kv.free(r1)  # blocks 0 and 1 cached-free, 3 free in total
    r2 = make_request("b", list(range(4)) + [7] * 9)  # 13 tokens -> 4 blocks, 1 hit
    hits = kv.find_cached_prefix(r2)
    assert [b.block_id for b in hits] == [0]
    assert not kv.can_allocate(r2, 9, hits)  # needs 3 new + the revived hit = 4 > 3
    r3 = make_request("c", list(range(4)) + [7] * 5)  # 9 tokens -> 3 blocks, 1 hit
    hits = kv.find_cached_prefix(r3)
    assert kv.can_allocate(r3, 5, hits)
    assert kv.allocate(r3, 5, hits) == [0, 2, 1]  # block 1 (b's old key) is evicted last


def test_decode_growth_allocates_one_block_per_block_size_tokens():
    kv = KVCacheManager(num_blocks=8, block_size=BLOCK, model_fingerprint=FP)
    r = make_request("a", range(3))
    assert kv.allocate(r, 3) == [0]
    r.num_computed_tokens = 3
    for expected, token in zip([[0], [0, 1], [0, 1], [0, 1]], [10, 11, 12, 13]):
        r.append_output_token(token)
        assert kv.allocate(r, 1) == expected
        r.num_computed_tokens += 1
    # Once a block fills, it is keyed under the chained hash of its tokens.
    assert kv.pool.blocks[0].block_hash == hash_full_blocks([0, 1, 2, 10], BLOCK, root_block_hash(FP))[0]
