"""Runs one scheduled step: inputs -> forward -> logits -> sampled tokens.

The runner owns the device state (weights, the paged KV cache tensors and the
sampler) and nothing about request lifetimes. Its only input is the
scheduler's typed ``SchedulerOutput``; its only output is ``RunnerOutput``.

On CUDA, with a backend that can be captured, steps made only of one-token
decodes replay a CUDA graph (:mod:`services.engine.cuda_graphs`); other steps
run eagerly. Either way a step syncs with the GPU once, for the sampled ids.

A step runs in two calls so the host can work while the GPU computes
(overlap scheduling): ``launch`` queues the forward, the sampler and the
copies of the sampled ids to pinned host memory, and returns at once;
``collect`` waits for those copies. A step launched before the previous one
was collected may decode tokens whose ids the host has not seen yet (the
scheduler's pending tokens): their input ids are gathered on the device from
the previous launch's sampled ids.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kernels.dispatch import select_backend
from services.engine.batch_inputs import build_batch_inputs
from services.engine.block_table_rows import BlockTableRows
from services.engine.cuda_graphs import DecodeGraphs
from services.engine.decode_inputs import DecodeLayout, is_decode_only
from services.engine.host_staging import HostStaging
from services.engine.models.decoder import DecoderLM, DecoderShape, KVCache
from services.engine.request import Request
from services.engine.sampled_output import HostCopies, SampledBatch
from services.engine.sampler import SampleLogprobs, Sampler, compute_prompt_logprobs
from services.engine.sampling_batch import SamplingBatch
from services.engine.scheduler import ScheduledChunk, SchedulerOutput

# A CPU KV cache is host memory the OS may need; vLLM's CPU backend also
# defaults to a few GiB rather than a fraction of RAM.
_CPU_KV_CACHE_CAP_BYTES = 2 << 30


@dataclass
class RunnerOutput:
    sampled_token_ids: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, SampleLogprobs] = field(default_factory=dict)
    # Prompt logprobs computed this step, keyed by request, in position order.
    prompt_logprobs: dict[str, list[SampleLogprobs]] = field(default_factory=dict)


@dataclass
class LaunchedStep:
    """A step queued on the device; :meth:`ModelRunner.collect` turns it into a ``RunnerOutput``."""

    step: SchedulerOutput
    sampling: list[Request]  # the requests that sample, in row order
    sampled: SampledBatch | None  # pinned host copies, valid after ``copies.wait()``
    copies: HostCopies
    prompt_logprobs: dict[str, list[SampleLogprobs]]


def kv_block_bytes(shape: DecoderShape, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes across all layers, keys and values."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * shape.num_layers * block_size * shape.num_kv_heads * shape.head_dim * elem


def num_kv_blocks_for_budget(
    shape: DecoderShape,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    fraction: float,
    reserved_bytes: int = 0,
) -> int:
    """How many blocks fit in ``fraction`` of the free memory of ``device``,
    after ``reserved_bytes`` (e.g. CUDA graphs captured later) are set aside."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        free = min(free, _CPU_KV_CACHE_CAP_BYTES / fraction)
    free = max(0, free - reserved_bytes)
    return max(1, int(free * fraction) // kv_block_bytes(shape, block_size, dtype))


def cuda_graphs_supported(device: torch.device) -> bool:
    """Whether decode steps on ``device`` can be captured: CUDA and a backend that allows it."""
    return device.type == "cuda" and bool(getattr(select_backend(device), "CUDA_GRAPH_SAFE", False))


class ModelRunner:
    def __init__(
        self,
        model: DecoderLM,
        num_kv_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        max_model_len: int | None = None,
        cuda_graph_max_batch: int = 0,
    ) -> None:
        """``cuda_graph_max_batch > 0`` prepares decode graphs up to that batch (CUDA and a
        capturable backend only; ``max_model_len`` is then required); call
        :meth:`capture_cuda_graphs` once to capture them."""
        self.model = model
        self.block_size = block_size
        self.device = device
        self.dtype = dtype
        shape = model.shape
        use_graphs = cuda_graph_max_batch > 0 and cuda_graphs_supported(device)
        if use_graphs and max_model_len is None:
            raise ValueError("CUDA graphs need max_model_len to size the static block tables")
        # With graphs, one block past the pool's is the padding rows' scratch
        # block: the block pool only knows ids below num_kv_blocks.
        cache_shape = (num_kv_blocks + int(use_graphs), block_size, shape.num_kv_heads, shape.head_dim)
        # Left uninitialised: attention only ever reads slots this engine wrote.
        self.kv_caches: list[KVCache] = [
            (
                torch.empty(cache_shape, dtype=dtype, device=device),
                torch.empty(cache_shape, dtype=dtype, device=device),
            )
            for _ in range(shape.num_layers)
        ]
        self.sampler = Sampler()
        backend = select_backend(device)
        self.kernel_backend = backend.__name__
        # Backends that attend through block tables need no per-token slot views.
        self._slot_views = not getattr(backend, "READS_BLOCK_TABLES", False)
        self._staging = HostStaging(device) if device.type == "cuda" else None
        self._block_rows = BlockTableRows()
        self.decode_graphs: DecodeGraphs | None = None
        if use_graphs:
            assert max_model_len is not None
            layout = DecodeLayout(
                max_batch=cuda_graph_max_batch,
                max_blocks=-(-max_model_len // block_size),
                block_size=block_size,
                scratch_block=num_kv_blocks,
            )
            self.decode_graphs = DecodeGraphs(model, self.kv_caches, layout, device, self._block_rows)
        self.num_graph_steps = 0
        self.num_eager_steps = 0
        # The last launched step's sampled ids (device) and each sampling request's row in them.
        self._last_sampled: torch.Tensor | None = None
        self._last_rows: dict[str, int] = {}

    def capture_cuda_graphs(self) -> int:
        """Capture the decode graphs (engine start); returns their memory in bytes, 0 when off."""
        return self.decode_graphs.capture() if self.decode_graphs is not None else 0

    @property
    def cuda_graphs_active(self) -> bool:
        return self.decode_graphs is not None and self.decode_graphs.captured

    def _replays_graph(self, step: SchedulerOutput) -> bool:
        graphs = self.decode_graphs
        if graphs is None or not graphs.captured:
            return False
        return graphs.fits(len(step.chunks)) and is_decode_only(step.chunks)

    @torch.inference_mode()
    def execute(self, step: SchedulerOutput, use_cuda_graphs: bool = True) -> RunnerOutput:
        """Run one step and wait for it; ``use_cuda_graphs=False`` forces the eager path."""
        return self.collect(self.launch(step, use_cuda_graphs))

    @torch.inference_mode()
    def launch(self, step: SchedulerOutput, use_cuda_graphs: bool = True) -> LaunchedStep:
        """Queue one step on the device without waiting for it."""
        copies = HostCopies(self.device)
        if step.is_empty:
            return LaunchedStep(step, [], None, copies, {})
        graphed = use_cuda_graphs and self._replays_graph(step)
        pending = self._pending_inputs(step.chunks, graph_rows=graphed)
        if graphed:
            assert self.decode_graphs is not None
            hidden = self.decode_graphs.run(step.chunks, pending)
            # One row per chunk: the sampled rows are the chunks that sample.
            rows = [i for i, c in enumerate(step.chunks) if c.samples]
            sample_index = None if len(rows) == len(step.chunks) else _to_device(rows, self.device)
            self.num_graph_steps += 1
        else:
            inputs = build_batch_inputs(
                step.chunks, self.block_size, self.device,
                slot_views=self._slot_views, staging=self._staging, rows=self._block_rows,
            )
            if pending is not None:
                pending(inputs.input_ids)
            hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)
            sample_index = inputs.sample_token_index
            self.num_eager_steps += 1

        prompt_logprobs = self._prompt_logprobs(step, hidden)
        sampling = [c.request for c in step.chunks if c.samples]
        self._last_sampled, self._last_rows = None, {}
        if not sampling:
            return LaunchedStep(step, sampling, None, copies, prompt_logprobs)
        logits = self.model.compute_logits(hidden if sample_index is None else hidden[sample_index])
        batch = SamplingBatch.from_requests(sampling, logits.shape[-1], self.device)
        sampled = self.sampler.sample(logits, batch)
        self._last_sampled = sampled.token_ids
        self._last_rows = {request.request_id: row for row, request in enumerate(sampling)}
        host = sampled.to_host(copies)
        copies.record()
        return LaunchedStep(step, sampling, host, copies, prompt_logprobs)

    def collect(self, launched: LaunchedStep) -> RunnerOutput:
        """Wait for a launched step's results and read them (the step's one host sync)."""
        out = RunnerOutput(prompt_logprobs=launched.prompt_logprobs)
        if launched.sampled is None:
            return out
        launched.copies.wait()
        result = launched.sampled.to_output()
        for request, token_id, logprobs in zip(launched.sampling, result.sampled_token_ids, result.logprobs):
            out.sampled_token_ids[request.request_id] = token_id
            if logprobs is not None:
                out.logprobs[request.request_id] = logprobs
        return out

    def _pending_inputs(
        self, chunks: list[ScheduledChunk], graph_rows: bool
    ) -> Callable[[torch.Tensor], None] | None:
        """What fills in the input ids the host does not know yet, or None when it knows them all.

        A chunk's input at position ``request.num_tokens`` is the token its
        previous step sampled (the scheduler allows one such pending token); it
        sits at the chunk's row in a graph's one-token rows, or at its offset
        in the flat eager input.
        """
        dst: list[int] = []
        src: list[int] = []
        token_start = 0
        for row, chunk in enumerate(chunks):
            request = chunk.request
            first_pending = request.num_tokens
            if chunk.num_computed_before + chunk.num_new_tokens > first_pending:
                if request.request_id not in self._last_rows:
                    raise RuntimeError(f"request {request.request_id} decodes a token no launched step sampled")
                dst.append(row if graph_rows else token_start + first_pending - chunk.num_computed_before)
                src.append(self._last_rows[request.request_id])
            token_start += chunk.num_new_tokens
        if not dst:
            return None
        assert self._last_sampled is not None
        values = self._last_sampled.index_select(0, _to_device(src, self.device))
        index = _to_device(dst, self.device)
        return lambda input_ids: input_ids.index_copy_(0, index, values)

    def _prompt_logprobs(self, step: SchedulerOutput, hidden: torch.Tensor) -> dict[str, list[SampleLogprobs]]:
        """Logprobs of each prompt token given the tokens before it, for requests that asked.

        These sync with the device at launch: a step that asks for them is not overlapped.
        """
        out: dict[str, list[SampleLogprobs]] = {}
        token_start = 0
        for chunk in step.chunks:
            request = chunk.request
            k = request.sampling_params.prompt_logprobs
            start, end = chunk.num_computed_before, chunk.num_computed_before + chunk.num_new_tokens
            # Position p predicts prompt token p + 1; the last prompt position predicts output.
            last = min(end, request.num_prompt_tokens - 1)
            if k is not None and start < last:
                rows = hidden[token_start : token_start + (last - start)]
                targets = _to_device(request.prompt_token_ids[start + 1 : last + 1], self.device)
                logits = self.model.compute_logits(rows)
                out[request.request_id] = compute_prompt_logprobs(logits, targets, k)
            token_start += chunk.num_new_tokens
        return out


def _to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """An int64 tensor on ``device`` without waiting for the stream (a blocking copy would)."""
    return torch.tensor(values, dtype=torch.int64).to(device, non_blocking=True)
