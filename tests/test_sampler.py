"""Sampler and SamplingBatch: greedy, filters, penalties, seeding, logprobs."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from services.engine import sampler as sampler_module
from services.engine.request import Request
from services.engine.sampler import Sampler, apply_penalties, compute_prompt_logprobs
from services.engine.sampling_batch import SamplingBatch
from services.engine.sampling_params import SamplingParams

CPU = torch.device("cpu")


def make_request(
    prompt: list[int] | None = None,
    output: list[int] | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
    **params: object,
) -> Request:
    request = Request(
        request_id="r",
        prompt_token_ids=list(prompt or [0]),
        sampling_params=SamplingParams(seed=seed, **params),
        eos_token_id=eos_token_id,
    )
    request.output_token_ids = list(output or [])
    if seed is not None:
        request.generator = torch.Generator().manual_seed(seed)
    return request


def sample(requests: list[Request], logits: torch.Tensor, sampler: Sampler | None = None):
    batch = SamplingBatch.from_requests(requests, logits.shape[1], CPU)
    return (sampler or Sampler(seed=0))(logits, batch)


def logits_from_probs(probs: list[float], rows: int) -> torch.Tensor:
    return torch.tensor(probs).log().unsqueeze(0).repeat(rows, 1)


def test_greedy_is_argmax_in_any_dtype() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 1000)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        typed = logits.to(dtype)
        out = sample([make_request(temperature=0.0) for _ in range(8)], typed)
        assert out.sampled_token_ids == typed.float().argmax(-1).tolist()
        assert out.logprobs == [None] * 8


def test_plain_greedy_batch_has_no_optional_tensors() -> None:
    batch = SamplingBatch.from_requests([make_request(temperature=0.0) for _ in range(4)], 100, CPU)
    assert batch.is_plain_greedy and batch.all_greedy
    assert batch.top_k is None and batch.top_p is None and batch.min_p is None
    assert batch.prompt_token_mask is None and batch.output_token_counts is None
    assert batch.min_tokens_rows is None and batch.max_num_logprobs is None


def test_top_k_one_equals_greedy_with_temperature_one() -> None:
    torch.manual_seed(1)
    for _ in range(5):
        logits = torch.randn(16, 500)
        out = sample([make_request(temperature=1.0, top_k=1, seed=i) for i in range(16)], logits)
        assert out.sampled_token_ids == logits.argmax(-1).tolist()


def test_sampler_leaves_caller_logits_untouched() -> None:
    torch.manual_seed(2)
    logits = torch.randn(4, 64)
    before = logits.clone()
    requests = [
        make_request(temperature=0.7, top_p=0.9, repetition_penalty=1.3, output=[1, 2], logprobs=2)
    ] * 4
    sample(requests, logits)
    assert torch.equal(logits, before)


def run_seeded_request(seed: int, companions: list[Request], position: int, steps: int) -> list[int]:
    """Tokens a seeded request samples over ``steps`` steps, sharing the batch with ``companions``."""
    # top_k and top_p together: alone it takes the partial top-k path, next to a
    # row without top-k the full sort; both must give the same tokens.
    target = make_request(seed=seed, temperature=1.3, top_k=40, top_p=0.95)
    logits_rng = torch.Generator().manual_seed(1234)
    sampler = Sampler(seed=position)  # a different shared stream per mix
    tokens = []
    for _ in range(steps):
        requests = companions[:position] + [target] + companions[position:]
        logits = torch.randn(len(requests), 300, generator=logits_rng)
        # The target's own logits are the same in every mix; only the others change.
        logits[position] = torch.linspace(-2, 2, 300).flip(0) + torch.sin(
            torch.arange(300) * (len(tokens) + 1)
        )
        token = sampler(logits, SamplingBatch.from_requests(requests, 300, CPU)).sampled_token_ids[position]
        tokens.append(token)
        target.append_output_token(token)
    return tokens


def test_seeded_request_reproduces_whatever_shares_the_batch() -> None:
    alone = run_seeded_request(seed=7, companions=[], position=0, steps=12)
    mix_a = [make_request(temperature=0.0), make_request(temperature=0.9), make_request(seed=99, top_k=5)]
    mix_b = [
        make_request(temperature=0.5, min_p=0.1),
        make_request(seed=3),
        make_request(temperature=2.0, top_k=10, top_p=0.5, presence_penalty=1.0, output=[4, 4]),
        make_request(temperature=0.0, logprobs=3),
        make_request(temperature=1.0, min_tokens=4, eos_token_id=0),
    ]
    assert run_seeded_request(7, mix_a, position=2, steps=12) == alone
    assert run_seeded_request(7, mix_b, position=4, steps=12) == alone
    assert run_seeded_request(7, mix_b, position=0, steps=12) == alone
    assert run_seeded_request(8, mix_a, position=1, steps=12) != alone


def test_each_token_draws_one_vocab_sized_vector_from_the_row_generator() -> None:
    request = make_request(seed=5, temperature=1.0)
    reference = torch.Generator().manual_seed(5)
    for _ in range(3):
        sample([make_request(temperature=0.8), request], torch.randn(2, 77))
        torch.empty(77).exponential_(generator=reference)
        assert torch.equal(request.generator.get_state(), reference.get_state())


def test_different_seeds_give_different_samples() -> None:
    logits = torch.zeros(1, 1000)
    runs = {tuple(sample([make_request(seed=s)], logits, Sampler()).sampled_token_ids) for s in range(10)}
    assert len(runs) > 5


def empirical(requests_params: dict, probs: list[float], draws: int = 4000) -> Counter:
    logits = logits_from_probs(probs, draws)
    out = sample([make_request(**requests_params)] * draws, logits)
    return Counter(out.sampled_token_ids)


def test_top_k_restricts_support() -> None:
    torch.manual_seed(3)
    logits = torch.randn(1, 50).repeat(3000, 1)
    allowed = set(logits[0].topk(5).indices.tolist())
    out = sample([make_request(temperature=3.0, top_k=5)] * 3000, logits)
    assert set(out.sampled_token_ids) == allowed


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs = [0.5, 0.3, 0.1, 0.06, 0.04]
    counts = empirical({"top_p": 0.75}, probs)
    assert set(counts) == {0, 1}
    assert counts[0] / 4000 == pytest.approx(0.5 / 0.8, abs=0.03)
    assert set(empirical({"top_p": 0.85}, probs)) == {0, 1, 2}
    # The top token always survives, however small top_p is.
    assert set(empirical({"top_p": 0.01}, probs, draws=200)) == {0}


def test_min_p_drops_tokens_below_fraction_of_best() -> None:
    probs = [0.4, 0.3, 0.2, 0.06, 0.04]
    counts = empirical({"min_p": 0.2}, probs)  # threshold 0.08
    assert set(counts) == {0, 1, 2}
    assert counts[2] / 4000 == pytest.approx(0.2 / 0.9, abs=0.03)


def test_top_k_and_top_p_together() -> None:
    probs = [0.3, 0.25, 0.2, 0.15, 0.1]
    assert set(empirical({"top_k": 3, "top_p": 0.99}, probs)) == {0, 1, 2}
    assert set(empirical({"top_k": 4, "top_p": 0.5}, probs)) == {0, 1}


def test_unfiltered_sampling_follows_the_distribution() -> None:
    probs = [0.5, 0.25, 0.125, 0.125]
    counts = empirical({"temperature": 1.0}, probs, draws=8000)
    for token, p in enumerate(probs):
        assert counts[token] / 8000 == pytest.approx(p, abs=0.025)


def test_temperature_sharpens() -> None:
    probs = [0.6, 0.4]
    counts = empirical({"temperature": 0.5}, probs)
    # p ** 2 renormalized: 0.36 / 0.52
    assert counts[0] / 4000 == pytest.approx(0.36 / 0.52, abs=0.03)


def test_penalties_match_hand_computed_values() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -0.5]])
    request = make_request(
        prompt=[0, 4],
        output=[1, 2, 2],
        repetition_penalty=2.0,
        presence_penalty=0.5,
        frequency_penalty=0.25,
    )
    batch = SamplingBatch.from_requests([request], 5, CPU)
    apply_penalties(logits, batch)
    expected = [
        2.0 / 2,  # prompt token, positive: divided
        -1.0 * 2 - 0.25 * 1 - 0.5,  # output once, negative: multiplied, then additive
        0.5 / 2 - 0.25 * 2 - 0.5,  # output twice
        3.0,  # never seen
        -0.5 * 2,  # prompt token, negative; additive penalties skip prompt tokens
    ]
    assert logits[0].tolist() == pytest.approx(expected)


def test_penalties_apply_per_row_only() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    requests = [
        make_request(prompt=[2], output=[2], repetition_penalty=1.5),
        make_request(prompt=[2], output=[2]),
    ]
    batch = SamplingBatch.from_requests(requests, 3, CPU)
    apply_penalties(logits, batch)
    torch.testing.assert_close(logits, torch.tensor([[1.0, 2.0, 2.0], [1.0, 2.0, 3.0]]))


def test_output_counts_follow_a_growing_output() -> None:
    request = make_request(prompt=[0], output=[1], presence_penalty=1.0)
    for step in range(70):  # past the cached buffer's first growth
        batch = SamplingBatch.from_requests([make_request(), request], 8, CPU)
        counts = batch.output_token_counts
        assert counts[0].sum() == 0  # a row without penalties is left out
        expected = torch.bincount(torch.tensor(request.output_token_ids), minlength=8).float()
        assert torch.equal(counts[1], expected)
        request.append_output_token(step % 8)


def test_frequency_penalty_changes_greedy_choice() -> None:
    logits = torch.tensor([[0.0, 1.0, 1.5]])
    plain = sample([make_request(temperature=0.0, output=[2, 2])], logits)
    penalized = sample([make_request(temperature=0.0, output=[2, 2], frequency_penalty=0.5)], logits)
    assert plain.sampled_token_ids == [2] and penalized.sampled_token_ids == [1]


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_min_tokens_bans_eos_and_stop_ids(ignore_eos: bool) -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 1.0]])  # eos=0, stop id 1, then 2
    params = {
        "temperature": 0.0,
        "min_tokens": 2,
        "stop_token_ids": [1],
        "eos_token_id": 0,
        "ignore_eos": ignore_eos,
    }
    assert sample([make_request(output=[3], **params)], logits).sampled_token_ids == [2]
    assert sample([make_request(output=[3, 3], **params)], logits).sampled_token_ids == [0]


def test_min_tokens_also_constrains_random_rows() -> None:
    logits = torch.tensor([[9.0, 9.0, 0.0]]).repeat(500, 1)
    out = sample([make_request(min_tokens=1, eos_token_id=0, stop_token_ids=[1])] * 500, logits)
    assert set(out.sampled_token_ids) == {2}


def test_logprobs_come_from_raw_logits_with_ranks() -> None:
    torch.manual_seed(4)
    raw = torch.randn(4, 200) * 3
    requests = [
        make_request(temperature=0.0, logprobs=3),
        make_request(temperature=0.7, top_k=20, repetition_penalty=1.5, output=[5], logprobs=5),
        make_request(temperature=1.0),
        make_request(temperature=1.2, logprobs=0),
    ]
    for dtype in (torch.float32, torch.bfloat16):
        logits = raw.to(dtype)
        out = sample(requests, logits)
        reference = torch.log_softmax(logits.float(), dim=-1)
        assert out.logprobs[2] is None
        for row, k in ((0, 3), (1, 5), (3, 0)):
            entry = out.logprobs[row]
            token = out.sampled_token_ids[row]
            assert entry.token_id == token
            assert entry.logprob == pytest.approx(reference[row, token].item(), abs=1e-4)
            assert entry.rank == int((reference[row] > reference[row, token]).sum()) + 1
            top = reference[row].topk(k) if k else None
            assert entry.top_token_ids == (top.indices.tolist() if k else [])
            assert entry.top_logprobs == pytest.approx(top.values.tolist() if k else [], abs=1e-4)
        assert out.logprobs[0].rank == 1  # greedy picks the best token


def test_prompt_logprobs(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(5)
    logits = torch.randn(9, 40)
    targets = torch.randint(0, 40, (9,))
    # Force several chunks to cover the chunked path.
    monkeypatch.setattr(sampler_module, "_PROMPT_LOGPROBS_CHUNK_ELEMENTS", 40 * 4)
    results = compute_prompt_logprobs(logits, targets, k=2)
    reference = torch.log_softmax(logits, dim=-1)
    assert len(results) == 9
    for i, entry in enumerate(results):
        target = int(targets[i])
        assert entry.token_id == target
        assert entry.logprob == pytest.approx(reference[i, target].item(), abs=1e-5)
        assert entry.rank == int((reference[i] > reference[i, target]).sum()) + 1
        assert entry.top_token_ids == reference[i].topk(2).indices.tolist()
        assert math.isclose(entry.top_logprobs[0], reference[i].max().item(), abs_tol=1e-5)
