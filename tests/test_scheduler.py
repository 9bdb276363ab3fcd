"""Scheduler: token budget, chunked prefill mixed with decodes, FCFS, preemption by recompute."""

from services.engine.kv_cache_manager import KVCacheManager
from services.engine.request import Request, RequestStatus
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import Scheduler, SchedulerConfig

BLOCK = 4


def make_scheduler(num_blocks=32, budget=64, max_seqs=8, max_len=256) -> Scheduler:
    kv = KVCacheManager(num_blocks, BLOCK, "fp", enable_caching=True)
    return Scheduler(SchedulerConfig(budget, max_seqs, max_len), kv)


def req(rid: str, n_prompt: int, max_tokens: int = 8, start: int = 0) -> Request:
    return Request(rid, list(range(start, start + n_prompt)), SamplingParams(temperature=0, max_tokens=max_tokens))


def run_step(s: Scheduler, token: int = 7):
    out = s.schedule()
    sampled = {c.request.request_id: token for c in out.chunks if c.samples}
    finished = s.update_from_output(out, sampled)
    return out, finished


def test_long_prompt_is_chunked_and_mixed_with_decodes():
    s = make_scheduler(budget=10)
    a = req("a", 5)
    s.add_request(a)
    out, _ = run_step(s)
    assert [(c.request.request_id, c.num_new_tokens) for c in out.chunks] == [("a", 5)]
    b = req("b", 23, start=100)
    s.add_request(b)
    out, _ = run_step(s)
    # a decodes one token; b gets the remaining 9 of the budget.
    assert [(c.request.request_id, c.num_computed_before, c.num_new_tokens) for c in out.chunks] == [
        ("a", 5, 1),
        ("b", 0, 9),
    ]
    assert not out.chunks[1].samples
    out, _ = run_step(s)
    assert [(c.request.request_id, c.num_new_tokens) for c in out.chunks] == [("a", 1), ("b", 9)]
    out, _ = run_step(s)
    assert [(c.request.request_id, c.num_computed_before, c.num_new_tokens) for c in out.chunks] == [
        ("a", 7, 1),
        ("b", 18, 5),
    ]
    assert out.chunks[1].samples and b.num_output_tokens == 1
    assert b.block_hashes and len(s.kv_cache.block_ids("b")) == 6


def test_fcfs_and_max_num_seqs():
    s = make_scheduler(max_seqs=2)
    reqs = [req(str(i), 3, start=10 * i) for i in range(4)]
    for r in reqs:
        s.add_request(r)
    out, _ = run_step(s)
    assert [c.request.request_id for c in out.chunks] == ["0", "1"]
    assert [r.request_id for r in s.waiting] == ["2", "3"]


def test_finished_requests_release_blocks_and_leave_batch():
    s = make_scheduler()
    r = req("a", 3, max_tokens=2)
    s.add_request(r)
    run_step(s)
    _, finished = run_step(s)
    assert finished == [r] and r.status is RequestStatus.FINISHED_LENGTH
    assert r.output_token_ids == [7, 7]
    assert not s.running and s.kv_cache.num_requests == 0
    assert s.kv_cache.pool.num_free_blocks == 32


def test_eos_and_stop_token_ids_and_min_tokens():
    s = make_scheduler()
    r = Request("a", [1, 2], SamplingParams(temperature=0, max_tokens=10, min_tokens=2, stop_token_ids=[5]), eos_token_id=9)
    s.add_request(r)
    run_step(s, token=9)  # eos before min_tokens: ignored
    assert not r.is_finished
    _, finished = run_step(s, token=5)
    assert finished == [r] and r.stop_reason == 5 and r.status is RequestStatus.FINISHED_STOPPED


def test_preemption_recomputes_newest_and_never_deadlocks():
    # 6 blocks of 4 tokens. Two requests of 8-token prompts take 2 blocks each.
    s = make_scheduler(num_blocks=6, budget=64, max_len=64)
    a, b = req("a", 8, max_tokens=12), req("b", 8, max_tokens=12, start=50)
    s.add_request(a)
    s.add_request(b)
    run_step(s)
    assert len(s.running) == 2 and s.kv_cache.pool.num_free_blocks == 2
    preempted_seen = False
    for _ in range(40):
        out, _ = run_step(s)
        if out.preempted:
            preempted_seen = True
            assert out.preempted[0] is b  # the newest running request goes first
            assert b.num_computed_tokens == 0 and b.status is RequestStatus.PREEMPTED
            assert s.waiting[0] is b
        if not s.has_unfinished:
            break
    assert preempted_seen
    assert a.status is RequestStatus.FINISHED_LENGTH and b.status is RequestStatus.FINISHED_LENGTH
    assert a.num_output_tokens == 12 and b.num_output_tokens == 12
    assert s.kv_cache.pool.num_free_blocks == 6


def test_preempted_request_readmits_through_its_own_cached_blocks():
    s = make_scheduler(num_blocks=6, budget=64, max_len=64)
    a, b = req("a", 8, max_tokens=12), req("b", 8, max_tokens=12, start=50)
    s.add_request(a)
    s.add_request(b)
    readmitted = None
    for _ in range(60):
        out, _ = run_step(s)
        for c in out.chunks:
            if c.request is b and b.num_preemptions and c.num_computed_before > 0 and readmitted is None:
                readmitted = c
        if not s.has_unfinished:
            break
    assert readmitted is not None, "b should have skipped its cached prompt blocks on re-admission"


# -- overlap scheduling: step N+1 is scheduled before step N's tokens are known --


def test_overlap_schedules_the_pending_token_before_it_is_known():
    s = make_scheduler()
    r = req("a", 5, max_tokens=3)
    s.add_request(r)
    first = s.schedule()
    assert (first.chunks[0].num_computed_before, first.chunks[0].num_new_tokens) == (0, 5)
    assert r.num_computed_tokens == 5 and r.num_pending_tokens == 1 and r.num_tokens == 5
    # Step 1 is still "on the GPU": step 2 decodes the token step 1 samples.
    second = s.schedule()
    assert [(c.num_computed_before, c.num_new_tokens, c.samples) for c in second.chunks] == [(5, 1, True)]
    assert r.num_pending_tokens == 2 and r.num_computed_tokens == 6
    assert s.update_from_output(first, {"a": 11}) == []
    assert r.output_token_ids == [11] and r.num_pending_tokens == 1
    # Its second pending token brings it to max_tokens=3 only with a third: still scheduled.
    third = s.schedule()
    assert [(c.num_computed_before, c.num_new_tokens) for c in third.chunks] == [(6, 1)]
    assert s.update_from_output(second, {"a": 12}) == []
    # Two known + one pending = max_tokens: nothing more to schedule for it.
    assert s.schedule().is_empty
    assert s.update_from_output(third, {"a": 13}) == [r]
    assert r.output_token_ids == [11, 12, 13] and r.status is RequestStatus.FINISHED_LENGTH
    assert s.kv_cache.pool.num_free_blocks == 32


def test_overlap_drops_the_extra_step_of_a_request_that_hit_eos():
    s = make_scheduler()
    r = Request("a", [1, 2, 3], SamplingParams(temperature=0, max_tokens=10), eos_token_id=9)
    s.add_request(r)
    first = s.schedule()
    second = s.schedule()  # launched before step 1 says "eos"
    assert s.update_from_output(first, {"a": 9}) == [r]
    assert r.status is RequestStatus.FINISHED_STOPPED and s.kv_cache.num_requests == 0
    # The second step's token for it arrives after it finished: ignored.
    assert s.update_from_output(second, {"a": 4}) == []
    assert r.output_token_ids == [9]


def test_overlap_preempted_request_waits_for_its_pending_token():
    s = make_scheduler(num_blocks=2, max_len=64)
    a, b = req("a", 4, max_tokens=8), req("b", 4, max_tokens=8, start=50)
    s.add_request(a)
    s.add_request(b)
    first = s.schedule()  # one 4-token block each: the pool is full
    second = s.schedule()  # a needs a 3rd block for its 5th token: b (in flight) is preempted
    assert second.preempted == [b] and b.num_pending_tokens == 1 and s.waiting[0] is b
    s.finish_request(a, RequestStatus.FINISHED_ABORTED)  # frees the whole pool
    assert s.schedule().is_empty  # b's token is still pending: not re-admitted yet
    s.update_from_output(first, {"a": 7, "b": 8})
    # b's token from the step that ran before its preemption is kept.
    assert b.output_token_ids == [8] and b.num_pending_tokens == 0
    assert b.num_computed_tokens == 0 and b.status is RequestStatus.PREEMPTED
    # Re-admitted: a took b's only block, so all 5 known tokens are recomputed.
    third = s.schedule()
    assert [(c.request, c.num_computed_before, c.num_new_tokens) for c in third.chunks] == [(b, 0, 5)]
