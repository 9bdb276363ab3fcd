"""The engine loop: add requests, step, collect outputs.

Lifecycle of a request:
  1. ``add_request`` validates it and fans it out into ``n`` sample children,
     all queued in the scheduler (they share the prompt's blocks through the
     prefix cache).
  2. Each ``step`` schedules a batch, runs the model once, advances every
     scheduled child, detokenizes new tokens and checks stop strings.
     With overlap scheduling (the default on CUDA) ``step`` schedules and
     launches step N+1 first, then collects step N: the host's scheduling,
     input building and output processing run while the GPU computes, and
     each call reports the tokens of the step before.
  3. A child ends on EOS / stop token / stop string (``stop``), ``max_tokens`` or
     the context limit (``length``), or ``abort_request`` (``abort``); its blocks
     go back to the pool at once. The parent finishes when all children have.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable

from services.engine.block_exchange import BlockExchange
from services.engine.config import EngineConfig
from services.engine.cuda_graphs import capture_memory_estimate
from services.engine.errors import InvalidRequestError
from services.engine.kernel_warmup import warm_up_logits, warm_up_prompt_steps
from services.engine.kv_cache_manager import KVCacheManager
from services.engine.model_loading import LoadedModel, load_model
from services.engine.model_runner import (
    LaunchedStep,
    ModelRunner,
    cuda_graphs_supported,
    num_kv_blocks_for_budget,
)
from services.engine.output_processor import OutputProcessor
from services.engine.outputs import RequestOutput
from services.engine.request import Request, RequestStatus
from services.engine.request_intake import PreparedRequest, build_children, prepare_request
from services.engine.sampler import SampleLogprobs
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    prefix_cache_hit_tokens: int
    prefix_cache_queried_tokens: int
    num_preemptions: int


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        loaded: LoadedModel = load_model(config)
        self.model_config = loaded
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.max_model_len = loaded.max_model_len
        shape = loaded.model.shape
        graph_max_batch = config.resolved_cuda_graph_max_batch() if cuda_graphs_supported(loaded.device) else 0
        # The graphs are captured after the KV cache exists: keep their pool out of its budget.
        graph_reserve = capture_memory_estimate(shape, graph_max_batch, loaded.dtype) if graph_max_batch else 0
        num_blocks = config.num_kv_blocks or num_kv_blocks_for_budget(
            shape, config.block_size, loaded.dtype, loaded.device, config.kv_cache_memory_fraction, graph_reserve
        )
        if num_blocks * config.block_size < self.max_model_len:
            raise ValueError(
                f"{num_blocks} KV blocks of {config.block_size} tokens hold {num_blocks * config.block_size} "
                f"tokens, fewer than max_model_len={self.max_model_len}: raise the memory budget or "
                "lower max_model_len"
            )
        self.kv_cache = KVCacheManager(
            num_blocks, config.block_size, loaded.fingerprint, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_batched_tokens, config.max_num_seqs, self.max_model_len),
            self.kv_cache,
        )
        self.runner = ModelRunner(
            loaded.model, num_blocks, config.block_size, loaded.dtype, loaded.device,
            max_model_len=self.max_model_len, cuda_graph_max_batch=graph_max_batch,
        )
        graph_bytes = self.runner.capture_cuda_graphs()
        if self.device.type == "cuda":
            warmup_s = warm_up_prompt_steps(self.runner, self.kv_cache, config.max_num_seqs)
            warmup_s += warm_up_logits(self.runner, config.max_num_seqs)
            logger.info("prompt-step and LM-head kernels warmed up in %.1f s", warmup_s)
        self.outputs = OutputProcessor(self.tokenizer)
        self.blocks = BlockExchange(self.kv_cache, self.runner)
        # Called on the engine thread after every step that ran the model.
        self.step_listeners: list[Callable[[SchedulerOutput], None]] = []
        self._children: dict[str, list[Request]] = {}
        self._ids = itertools.count()
        self.overlap_scheduling = config.resolved_overlap_scheduling(self.device)
        self._in_flight: LaunchedStep | None = None
        graphs = "off"
        if self.runner.cuda_graphs_active:
            graphs = f"batch <= {graph_max_batch}, {graph_bytes >> 20} MiB ({graph_reserve >> 20} MiB reserved)"
        logger.info(
            "engine ready: %s on %s (%s), %d KV blocks of %d tokens, kernels=%s, cuda graphs: %s, overlap: %s",
            loaded.architecture, self.device, self.dtype, num_blocks, config.block_size,
            self.runner.kernel_backend, graphs, self.overlap_scheduling,
        )

    # -- requests --------------------------------------------------------------

    def next_request_id(self) -> str:
        return str(next(self._ids))

    def prepare_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        presampled_token_ids: list[int] | None = None,
        presampled_logprobs: list[SampleLogprobs | None] | None = None,
    ) -> PreparedRequest:
        """Tokenize and validate without touching engine state (safe from any thread)."""
        return prepare_request(
            self.model_config, self.max_model_len, request_id, prompt, params,
            presampled_token_ids, presampled_logprobs,
        )

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | None = None,
    ) -> None:
        """Queue one request; raises an :class:`InvalidRequestError` subclass for bad input."""
        self.add_prepared(self.prepare_request(request_id, prompt, params))

    def add_prepared(self, prepared: PreparedRequest) -> None:
        """Queue a prepared request (engine thread only)."""
        if prepared.request_id in self._children:
            raise InvalidRequestError(f"request id {prepared.request_id!r} is already in use")
        children = build_children(prepared, self.model_config, self.device)
        self._children[prepared.request_id] = children
        self.outputs.add_parent(prepared.request_id, prepared.prompt, children)
        for child in children:
            if self._accept_presampled(child, prepared):
                self.scheduler.add_request(child)

    def _accept_presampled(self, child: Request, prepared: PreparedRequest) -> bool:
        """Append tokens sampled elsewhere as if this engine had; False if that ends the sample."""
        for token_id, logprobs in zip(prepared.presampled_token_ids, prepared.presampled_logprobs):
            child.append_output_token(token_id)
            stop_string = self.outputs.on_token(child.request_id, token_id, logprobs)
            status = RequestStatus.FINISHED_STOPPED if stop_string else self.scheduler.check_token_stop(child, token_id)
            if status is not None:
                child.status = status
                self.outputs.on_finished(child, stop_string)
                return False
        return True

    def abort_request(self, request_id: str) -> None:
        """Stop a request wherever it is; its blocks are freed before this returns."""
        for child in self._children.get(request_id, ()):
            if not child.is_finished:
                self.scheduler.finish_request(child, RequestStatus.FINISHED_ABORTED)
                self.outputs.on_finished(child)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished or self._in_flight is not None

    # -- the loop ----------------------------------------------------------------

    def step(self, final_only: bool = False) -> list[RequestOutput]:
        """Run one iteration; returns a snapshot of every request that changed.

        ``final_only`` returns only the requests that finished: a caller that
        waits for whole results (offline ``LLM.generate``) then skips copying
        every running request's tokens so far on every step.
        """
        previous, self._in_flight = self._in_flight, None
        if previous is not None and _needs_token_history(previous):
            # Penalties and min_tokens read the tokens so far on the host: let them land first.
            self._collect(previous)
            previous = None
        step = self.scheduler.schedule()
        launched = self._launch(step) if not step.is_empty else None
        if previous is not None:
            self._collect(previous)
        if launched is not None:
            if self.overlap_scheduling:
                self._in_flight = launched
            else:
                self._collect(launched)
        outputs = []
        for parent in self.outputs.pop_changed():
            if final_only and not parent.finished:
                continue
            first = self._children[parent.request_id][0]
            outputs.append(self.outputs.snapshot(parent, first.num_cached_tokens))
            if parent.finished:
                del self._children[parent.request_id]
        return outputs

    def _launch(self, step: SchedulerOutput) -> LaunchedStep | None:
        try:
            return self.runner.launch(step)
        except Exception:
            self._fail(step)
            return None

    def _collect(self, launched: LaunchedStep) -> None:
        step = launched.step
        try:
            result = self.runner.collect(launched)
        except Exception:
            self._fail(step)
            return
        for child_id, logprobs in result.prompt_logprobs.items():
            self.outputs.on_prompt_logprobs(child_id, logprobs)
        finished = self.scheduler.update_from_output(step, result.sampled_token_ids)
        finished_ids = {r.request_id for r in finished}
        for chunk in step.chunks:
            request = chunk.request
            token_id = result.sampled_token_ids.get(request.request_id)
            if token_id is None or (request.is_finished and request.request_id not in finished_ids):
                continue  # no token, or the request ended before this step's result came back
            stop = self.outputs.on_token(request.request_id, token_id, result.logprobs.get(request.request_id))
            if stop is not None:
                # A stop string wins over a length limit reached on the same token.
                if request.is_finished:
                    request.status = RequestStatus.FINISHED_STOPPED
                else:
                    self.scheduler.finish_request(request, RequestStatus.FINISHED_STOPPED)
                self.outputs.on_finished(request, stop)
            elif request.request_id in finished_ids:
                self.outputs.on_finished(request)
        for listener in self.step_listeners:
            listener(step)

    def _fail(self, step: SchedulerOutput) -> None:
        # The step's requests may now have half-written KV: end them and drop
        # every cache key that could point at it, then keep serving the rest.
        logger.exception("model step failed; aborting its %d requests", len(step.chunks))
        for chunk in step.chunks:
            if not chunk.request.is_finished:
                self.scheduler.finish_request(chunk.request, RequestStatus.FINISHED_ABORTED)
                self.outputs.on_finished(chunk.request)
        self.kv_cache.pool.reset_prefix_cache()

    # -- introspection -------------------------------------------------------------

    def stats(self) -> EngineStats:
        pool = self.kv_cache.pool
        prefix = self.kv_cache.stats
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_free_blocks=pool.num_free_blocks,
            num_total_blocks=pool.num_blocks,
            kv_cache_usage=pool.usage,
            prefix_cache_hit_rate=prefix.hit_rate,
            prefix_cache_hit_tokens=prefix.hit_tokens,
            prefix_cache_queried_tokens=prefix.queried_tokens,
            num_preemptions=self.scheduler.num_preemptions,
        )


def _needs_token_history(launched: LaunchedStep) -> bool:
    """Whether a request of the step samples with rules that read its output tokens on the host."""
    for request in launched.sampling:
        if request.sampling_params.uses_penalties:
            return True
        if request.num_output_tokens + request.num_pending_tokens <= request.sampling_params.min_tokens:
            return True
    return False
