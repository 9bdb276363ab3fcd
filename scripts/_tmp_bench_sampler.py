import time, sys, torch
from services.engine.request import Request
from services.engine.sampling_params import SamplingParams
from services.engine.sampling_batch import SamplingBatch
from services.engine.sampler import Sampler
dev = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cpu")
B, V = 256, 151936
def reqs(kind):
    out=[]
    for i in range(B):
        if kind=='greedy': p=SamplingParams(temperature=0.0)
        elif kind=='random': p=SamplingParams(temperature=0.8, top_p=0.95, top_k=50)
        elif kind=='topk': p=SamplingParams(temperature=0.8, top_k=50)
        elif kind=='seeded': p=SamplingParams(temperature=0.8, top_p=0.9, seed=i)
        elif kind=='penalty': p=SamplingParams(temperature=0.8, repetition_penalty=1.1, frequency_penalty=0.2, logprobs=5)
        r=Request(str(i), list(range(i, i+2000)), p, eos_token_id=2)
        r.output_token_ids=list(range(500))
        if p.seed is not None: r.generator=torch.Generator(device=dev).manual_seed(i)
        out.append(r)
    return out
logits=torch.randn(B,V,device=dev, dtype=torch.bfloat16)
s=Sampler(seed=0)
def sync():
    if dev.type=='cuda': torch.cuda.synchronize()
for kind in ['greedy','topk','random','seeded','penalty']:
    rs=reqs(kind)
    for it in range(3):
        sync(); t=time.perf_counter()
        b=SamplingBatch.from_requests(rs, V, dev); sync(); t1=time.perf_counter()
        o=s(logits,b); sync(); t2=time.perf_counter()
    print(f"{kind:8s} batch {1e3*(t1-t):7.2f} ms  sample {1e3*(t2-t1):7.2f} ms", flush=True)
