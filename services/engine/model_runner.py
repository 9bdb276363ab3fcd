"""Runs one scheduled step: inputs -> forward -> logits -> sampled tokens.

The runner owns the device state (weights, the paged KV cache tensors and the
sampler) and nothing about request lifetimes. Its only input is the
scheduler's typed ``SchedulerOutput``; its only output is ``RunnerOutput``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from kernels.dispatch import select_backend
from services.engine.batch_inputs import build_batch_inputs
from services.engine.models.decoder import DecoderLM, DecoderShape, KVCache
from services.engine.sampler import Sampler, SampleLogprobs, compute_prompt_logprobs
from services.engine.sampling_batch import SamplingBatch
from services.engine.scheduler import SchedulerOutput

# A CPU KV cache is host memory the OS may need; vLLM's CPU backend also
# defaults to a few GiB rather than a fraction of RAM.
_CPU_KV_CACHE_CAP_BYTES = 2 << 30


@dataclass
class RunnerOutput:
    sampled_token_ids: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, SampleLogprobs] = field(default_factory=dict)
    # Prompt logprobs computed this step, keyed by request, in position order.
    prompt_logprobs: dict[str, list[SampleLogprobs]] = field(default_factory=dict)


def kv_block_bytes(shape: DecoderShape, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes across all layers, keys and values."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * shape.num_layers * block_size * shape.num_kv_heads * shape.head_dim * elem


def num_kv_blocks_for_budget(
    shape: DecoderShape, block_size: int, dtype: torch.dtype, device: torch.device, fraction: float
) -> int:
    """How many blocks fit in ``fraction`` of the free memory of ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        free = min(free, _CPU_KV_CACHE_CAP_BYTES / fraction)
    return max(1, int(free * fraction) // kv_block_bytes(shape, block_size, dtype))


class ModelRunner:
    def __init__(
        self,
        model: DecoderLM,
        num_kv_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.device = device
        self.dtype = dtype
        shape = model.shape
        cache_shape = (num_kv_blocks, block_size, shape.num_kv_heads, shape.head_dim)
        # Left uninitialised: attention only ever reads slots this engine wrote.
        self.kv_caches: list[KVCache] = [
            (
                torch.empty(cache_shape, dtype=dtype, device=device),
                torch.empty(cache_shape, dtype=dtype, device=device),
            )
            for _ in range(shape.num_layers)
        ]
        self.sampler = Sampler()
        self.kernel_backend = select_backend(device).__name__

    @torch.inference_mode()
    def execute(self, step: SchedulerOutput) -> RunnerOutput:
        out = RunnerOutput()
        if step.is_empty:
            return out
        inputs = build_batch_inputs(step.chunks, self.block_size, self.device)
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)

        self._prompt_logprobs(step, hidden, out)

        sampling = [c.request for c in step.chunks if c.samples]
        if not sampling:
            return out
        logits = self.model.compute_logits(hidden[inputs.sample_token_index])
        batch = SamplingBatch.from_requests(sampling, logits.shape[-1], self.device)
        result = self.sampler(logits, batch)
        for request, token_id, logprobs in zip(sampling, result.sampled_token_ids, result.logprobs):
            out.sampled_token_ids[request.request_id] = token_id
            if logprobs is not None:
                out.logprobs[request.request_id] = logprobs
        return out

    def _prompt_logprobs(self, step: SchedulerOutput, hidden: torch.Tensor, out: RunnerOutput) -> None:
        """Logprobs of each prompt token given the tokens before it, for requests that asked."""
        token_start = 0
        for chunk in step.chunks:
            request = chunk.request
            k = request.sampling_params.prompt_logprobs
            start, end = chunk.num_computed_before, chunk.num_computed_before + chunk.num_new_tokens
            # Position p predicts prompt token p + 1; the last prompt position predicts output.
            last = min(end, request.num_prompt_tokens - 1)
            if k is not None and start < last:
                rows = hidden[token_start : token_start + (last - start)]
                targets = torch.tensor(
                    request.prompt_token_ids[start + 1 : last + 1], dtype=torch.int64, device=self.device
                )
                logits = self.model.compute_logits(rows)
                out.prompt_logprobs[request.request_id] = compute_prompt_logprobs(logits, targets, k)
            token_start += chunk.num_new_tokens
