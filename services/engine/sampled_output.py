"""A step's sampling results as tensors, and their trip to the host.

The sampler leaves its results on the device (:class:`SampledBatch`). With
overlap scheduling the runner starts copying them into pinned host memory
right after the sampling kernels, records one event, and reads them back only
when the step is collected; by then the next step is already queued, so the
GPU never waits for the host to look at token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SampleLogprobs:
    """Logprobs at one position: the chosen token's and the top ones (best first)."""

    token_id: int
    logprob: float
    rank: int  # 1 = the most likely token
    top_token_ids: list[int]
    top_logprobs: list[float]


@dataclass
class SamplerOutput:
    sampled_token_ids: list[int]
    # Per row; None for rows that did not ask for logprobs.
    logprobs: list[SampleLogprobs | None]


class HostCopies:
    """Non-blocking device-to-host copies of one step's results, and one event that says they landed.

    On a CPU device the "copies" are the tensors themselves and waiting is free.
    """

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._done = torch.cuda.Event() if self._cuda else None

    def copy(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self._cuda:
            return tensor
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        return host

    def record(self) -> None:
        if self._done is not None:
            self._done.record()

    def wait(self) -> None:
        if self._done is not None:
            self._done.synchronize()


@dataclass
class LogprobTensors:
    """Logprob facts of some rows: the chosen token's logprob and rank, and the top-k."""

    chosen: torch.Tensor  # [R] float32
    ranks: torch.Tensor  # [R] int64
    top_values: torch.Tensor | None  # [R, K] float32, K = the largest k asked
    top_ids: torch.Tensor | None  # [R, K] int64

    @classmethod
    def gather(cls, logprobs: torch.Tensor, token_ids: torch.Tensor, max_k: int) -> LogprobTensors:
        """From ``logprobs`` [R, V] and the chosen ``token_ids`` [R]."""
        chosen = logprobs.gather(1, token_ids.unsqueeze(1))
        # Rank = 1 + how many tokens are strictly more likely.
        ranks = (logprobs > chosen).sum(dim=-1).add_(1)
        top_values = top_ids = None
        if max_k > 0:
            top_values, top_ids = logprobs.topk(max_k, dim=-1)
        return cls(chosen.squeeze(1), ranks, top_values, top_ids)

    def to_host(self, copies: HostCopies) -> LogprobTensors:
        return LogprobTensors(
            copies.copy(self.chosen),
            copies.copy(self.ranks),
            None if self.top_values is None else copies.copy(self.top_values),
            None if self.top_ids is None else copies.copy(self.top_ids),
        )

    def to_list(self, token_ids: list[int], ks: list[int]) -> list[SampleLogprobs]:
        if self.top_values is not None and self.top_ids is not None:
            top_values, top_ids = self.top_values.tolist(), self.top_ids.tolist()
        else:
            top_values = top_ids = [[] for _ in ks]
        return [
            SampleLogprobs(token_id, logprob, rank, ids[:k], values[:k])
            for token_id, logprob, rank, ids, values, k in zip(
                token_ids, self.chosen.tolist(), self.ranks.tolist(), top_ids, top_values, ks
            )
        ]


def gather_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor, ks: list[int]) -> list[SampleLogprobs]:
    """Per row: logprob and rank of ``token_ids[row]`` plus the ``ks[row]`` best tokens (syncs)."""
    tensors = LogprobTensors.gather(logprobs, token_ids, max(ks, default=0))
    return tensors.to_list(token_ids.tolist(), ks)


@dataclass
class SampledBatch:
    """One token per row, and logprobs for the rows that asked, still as tensors."""

    token_ids: torch.Tensor  # [B] int64
    logprob_rows: list[int] = field(default_factory=list)
    logprob_ks: list[int] = field(default_factory=list)
    logprobs: LogprobTensors | None = None

    def to_host(self, copies: HostCopies) -> SampledBatch:
        """Start copying to pinned host memory; read the result after ``copies.wait()``."""
        logprobs = None if self.logprobs is None else self.logprobs.to_host(copies)
        return SampledBatch(copies.copy(self.token_ids), self.logprob_rows, self.logprob_ks, logprobs)

    def to_output(self) -> SamplerOutput:
        token_ids = self.token_ids.tolist()
        per_row: list[SampleLogprobs | None] = [None] * len(token_ids)
        if self.logprobs is not None:
            chosen = [token_ids[row] for row in self.logprob_rows]
            for row, row_logprobs in zip(self.logprob_rows, self.logprobs.to_list(chosen, self.logprob_ks)):
                per_row[row] = row_logprobs
        return SamplerOutput(token_ids, per_row)
