"""Page-locked host buffers that carry one step's small integer inputs to the GPU.

A step's inputs are a dozen short integer arrays. Copying each from pageable
memory costs a driver call, and torch's blocking ``.to(device)`` also waits for
the whole stream. Here the arrays of one dtype are packed into one pinned
buffer and sent with one ``non_blocking`` copy, so building a step's inputs
never waits for the GPU: the step's only sync stays the sampled token ids.

The host buffers are reused every step. Before they are overwritten, the copy
that last read them must have run; an event recorded after that copy says so
(it has almost always completed already, because the previous step synced on
its sampled tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_MIN_CAPACITY = 4096  # elements per dtype; buffers grow by doubling


@dataclass
class _Buffer:
    host: torch.Tensor  # pinned, 1-D
    copied: torch.cuda.Event  # recorded after the last copy that read ``host``
    pending: bool = False


class HostStaging:
    """Reusable pinned buffers, one per dtype, for a CUDA device."""

    def __init__(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"pinned staging is for CUDA devices, got {device}")
        self.device = device
        self._buffers: dict[torch.dtype, _Buffer] = {}

    def host_buffer(self, dtype: torch.dtype, size: int) -> np.ndarray:
        """A writable numpy view of ``size`` pinned elements, safe to overwrite now."""
        buffer = self._buffers.get(dtype)
        if buffer is not None and buffer.pending:
            buffer.copied.synchronize()
            buffer.pending = False
        if buffer is None or buffer.host.numel() < size:
            capacity = max(_MIN_CAPACITY, size, 2 * (buffer.host.numel() if buffer is not None else 0))
            buffer = _Buffer(torch.empty(capacity, dtype=dtype, pin_memory=True), torch.cuda.Event())
            self._buffers[dtype] = buffer
        return buffer.host[:size].numpy()

    def copy_to(self, dtype: torch.dtype, size: int, dst: torch.Tensor) -> None:
        """Copy the first ``size`` staged elements of ``dtype`` into the device tensor ``dst``."""
        buffer = self._buffers[dtype]
        dst.copy_(buffer.host[:size], non_blocking=True)
        buffer.copied.record()
        buffer.pending = True

    def upload(self, dtype: torch.dtype, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """Pack ``arrays`` into the ``dtype`` buffer, copy once; returns device views, one per array."""
        sizes = [a.size for a in arrays]
        total = sum(sizes)
        host = self.host_buffer(dtype, total)
        offset = 0
        for array, size in zip(arrays, sizes):
            host[offset : offset + size] = array.reshape(-1)
            offset += size
        device = torch.empty(total, dtype=dtype, device=self.device)
        self.copy_to(dtype, total, device)
        views, offset = [], 0
        for array, size in zip(arrays, sizes):
            views.append(device[offset : offset + size].view(array.shape))
            offset += size
        return views
