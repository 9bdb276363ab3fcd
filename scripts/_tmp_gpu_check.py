import torch
from services.engine.request import Request
from services.engine.sampling_params import SamplingParams
from services.engine.sampling_batch import SamplingBatch
from services.engine.sampler import Sampler, compute_prompt_logprobs
dev = torch.device("cuda")
V = 32000
def req(seed=None, **kw):
    r = Request("x", [1, 2, 3], SamplingParams(seed=seed, **kw), eos_token_id=2)
    if seed is not None: r.generator = torch.Generator(device=dev).manual_seed(seed)
    return r
def run(companions, pos, steps=10):
    target = req(seed=7, temperature=1.1, top_p=0.9, top_k=100)
    g = torch.Generator(device=dev).manual_seed(0)
    s = Sampler(seed=pos)
    toks = []
    for t in range(steps):
        rs = companions[:pos] + [target] + companions[pos:]
        logits = torch.randn(len(rs), V, device=dev, generator=g, dtype=torch.bfloat16)
        logits[pos] = torch.linspace(-3, 3, V, device=dev).to(torch.bfloat16) * (t + 1) % 5
        out = s(logits, SamplingBatch.from_requests(rs, V, dev))
        toks.append(out.sampled_token_ids[pos]); target.append_output_token(toks[-1])
    return toks
a = run([], 0)
b = run([req(temperature=0.0), req(temperature=0.5, min_p=0.1), req(seed=3, repetition_penalty=1.2)], 2)
c = run([req(temperature=0.9, logprobs=5) for _ in range(40)], 17)
print("seeded repro:", a == b == c, a)
# cpu generator with cuda logits
r = Request("y", [1], SamplingParams(seed=1), eos_token_id=2); r.generator = torch.Generator().manual_seed(1)
out = Sampler()(torch.randn(1, V, device=dev), SamplingBatch.from_requests([r], V, dev))
print("cpu generator on cuda ok", out.sampled_token_ids)
lg = torch.randn(5, V, device=dev, dtype=torch.bfloat16)
rs = [req(temperature=0.0, logprobs=3), req(temperature=1.0, top_k=1), req(temperature=1.0, logprobs=0)] + [req(temperature=0.0)] * 2
out = Sampler()(lg, SamplingBatch.from_requests(rs, V, dev))
ref = torch.log_softmax(lg.float(), -1)
print("greedy", out.sampled_token_ids[:2], lg.float().argmax(-1)[:2].tolist(), "lp err", abs(out.logprobs[0].logprob - ref[0].max().item()))
pl = compute_prompt_logprobs(lg, torch.tensor([1, 2, 3, 4, 5]), 2)
print("prompt lp", pl[0].logprob, ref[0, 1].item())
