"""Greedy output on the GPU against HF transformers, and CUDA-graph decode steps against eager ones.

Builds the tiny random checkpoints the CPU suite uses and, per arch/dtype:

* ``gpu_greedy_vs_hf``: 8 prompts through tandem on CUDA (CUDA graphs and
  overlap scheduling on, as an engine starts by default) and through HF
  ``generate`` one prompt at a time; the same prompts with graphs and overlap
  off, token for token against the default engine.
* ``gpu_cuda_graphs_mixed``: requests joining and finishing at different steps,
  so decode batches change size nearly every step (and prompt chunks mix in
  when requests join); tokens of the default engine (graphs, overlap) against
  the eager, sequential one.

    python -m bench.gpu_correctness
"""

from __future__ import annotations

import itertools
import random
import tempfile
from pathlib import Path

import torch

from bench.common import emit
from services.engine.decode_inputs import is_decode_only
from services.engine.scheduler import SchedulerOutput
from tests.fixtures.hf_oracle import make_prompts
from tests.fixtures.tiny_models import TINY_ARCHS, build_tiny_checkpoint

NEW_TOKENS = 16


def hf_greedy_cuda(folder: Path, prompts: list[list[int]], new_tokens: int, dtype: torch.dtype) -> list[list[int]]:
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).cuda().eval()
    model.generation_config = GenerationConfig()
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt], device="cuda")
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
            out.append(gen[0, len(prompt):].tolist())
    return out


def agreement(got: list[list[int]], want: list[list[int]]) -> dict[str, int]:
    """Sequences equal token for token, and the shortest common prefix over all of them."""
    exact = sum(g == w for g, w in zip(got, want))
    first = min(next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), len(w)) for g, w in zip(got, want))
    return {"exact_matches": exact, "min_matching_prefix": first}


def greedy(
    folder: Path, dtype_name: str, prompts: list[list[int]], cuda_graphs: bool, overlap: bool
) -> tuple[list[list[int]], int]:
    """Greedy tokens of ``prompts`` and how many steps replayed a graph."""
    from tandem import LLM, SamplingParams

    # A small token budget: chunked prefill mixed with decodes.
    llm = LLM(model=str(folder), dtype=dtype_name, device="cuda", num_kv_blocks=512, max_model_len=512,
              max_num_batched_tokens=64, cuda_graphs=cuda_graphs, overlap_scheduling=overlap)
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    return [o.outputs[0].token_ids for o in outputs], llm.engine.runner.num_graph_steps


def staggered(
    folder: Path, dtype_name: str, cuda_graphs: bool, overlap: bool, seed: int = 3
) -> tuple[list[list[int]], dict]:
    """48 requests joining and finishing over ~60 steps: decode batch sizes change as they come and go."""
    from services.engine.config import EngineConfig
    from services.engine.engine import LLMEngine
    from services.engine.sampling_params import SamplingParams

    engine = LLMEngine(EngineConfig(model=str(folder), dtype=dtype_name, device="cuda", num_kv_blocks=1024,
                                    max_model_len=512, max_num_batched_tokens=256, max_num_seqs=32,
                                    cuda_graphs=cuda_graphs, overlap_scheduling=overlap))
    rng = random.Random(seed)
    prompts = make_prompts(engine.tokenizer, 48, rng, min_len=3, max_len=80)
    # Half start together with distinct lengths, so one finishes nearly every
    # step; the other half join at random steps (their prompt chunks make
    # mixed steps) and finish at random lengths.
    arrivals = sorted([(0, i) for i in range(24)] + [(rng.randrange(1, 50), i) for i in range(24, 48)])
    lengths = rng.sample(range(2, 26), 24) + [rng.randint(1, 30) for _ in range(24)]
    decode_batches: list[int] = []

    def record(step: SchedulerOutput) -> None:
        if is_decode_only(step.chunks):
            decode_batches.append(len(step.chunks))

    engine.step_listeners.append(record)
    tokens: dict[int, list[int]] = {}
    step = 0
    while arrivals or engine.has_unfinished_requests():
        while arrivals and arrivals[0][0] <= step:
            _, i = arrivals.pop(0)
            params = SamplingParams(temperature=0, max_tokens=lengths[i], ignore_eos=True)
            engine.add_request(str(i), prompts[i], params)
        for output in engine.step():
            if output.finished:
                tokens[int(output.request_id)] = output.outputs[0].token_ids
        step += 1
    changes = sum(a != b for a, b in itertools.pairwise(decode_batches))
    stats = {"steps": step, "decode_only_steps": len(decode_batches), "decode_batch_size_changes": changes,
             "distinct_decode_batch_sizes": len(set(decode_batches)),
             "graph_steps": engine.runner.num_graph_steps}
    return [tokens[i] for i in range(len(prompts))], stats


def main() -> None:
    root = Path(tempfile.mkdtemp())
    for arch in TINY_ARCHS:
        folder = build_tiny_checkpoint(arch, root / arch)
        prompts = _prompts(folder)
        for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            got, graph_steps = greedy(folder, dtype_name, prompts, cuda_graphs=True, overlap=True)
            eager, _ = greedy(folder, dtype_name, prompts, cuda_graphs=False, overlap=False)
            want = hf_greedy_cuda(folder, prompts, NEW_TOKENS, dtype)
            emit("gpu_greedy_vs_hf", arch=arch, dtype=dtype_name, prompts=len(got), **agreement(got, want),
                 cuda_graphs=True, overlap_scheduling=True, graph_steps=graph_steps,
                 **{f"graphs_vs_eager_{k}": v for k, v in agreement(got, eager).items()})
            graphed, stats = staggered(folder, dtype_name, cuda_graphs=True, overlap=True)
            eager_mixed, eager_stats = staggered(folder, dtype_name, cuda_graphs=False, overlap=False)
            emit("gpu_cuda_graphs_mixed", arch=arch, dtype=dtype_name, requests=len(graphed),
                 **agreement(graphed, eager_mixed), **stats, eager_graph_steps=eager_stats["graph_steps"])


def _prompts(folder: Path) -> list[list[int]]:
    """The 8 prompts of the HF comparison (3-200 tokens), from the checkpoint's tokenizer."""
    from services.engine.tokenizer import load_tokenizer

    return make_prompts(load_tokenizer(str(folder)), 8, random.Random(1), min_len=3, max_len=200)


if __name__ == "__main__":
    main()
