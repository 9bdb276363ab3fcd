"""tandem: an LLM inference server with disaggregated prefill and decode.

``from tandem import LLM, SamplingParams`` is the offline API.
"""

from services.engine.llm import LLM
from services.engine.outputs import CompletionOutput, RequestOutput
from services.engine.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams"]
__version__ = "0.1.0"
