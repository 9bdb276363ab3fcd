"""tandem: an LLM inference server with disaggregated prefill and decode.

``from tandem import LLM, SamplingParams`` is the offline API.

The names are resolved on first use (PEP 562) because importing the engine
pulls in torch and transformers, several seconds of start-up that processes
needing only ``tandem._proto`` (the kvstore, the router) should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.engine.llm import LLM
    from services.engine.outputs import CompletionOutput, RequestOutput
    from services.engine.sampling_params import SamplingParams

_EXPORTS = {
    "LLM": "services.engine.llm",
    "CompletionOutput": "services.engine.outputs",
    "RequestOutput": "services.engine.outputs",
    "SamplingParams": "services.engine.sampling_params",
}

__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tandem' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value
