"""Request bodies of the OpenAI-compatible API (pydantic models; they also make /openapi.json).

Field bounds mirror what the engine accepts (``SamplingParams``) and what the
wire types can carry (uint32 token ids, int64 seeds), so a request that
validates here cannot fail on conversion later. Unknown fields are ignored, as
OpenAI's own API does for parameters a model does not use.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.engine.sampling_params import MAX_LOGPROBS, MAX_N

UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
# The router seeds sample i of a request with seed + i, in an int64.
SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1 - MAX_N
# Prompts in one completions request times n.
MAX_CHOICES = MAX_N
MAX_STOP_SEQUENCES = 16



def _encodable(text: str) -> str:
    # JSON may carry lone surrogates ("\ud800"), which no UTF-8 wire string can.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"the text is not valid Unicode (lone surrogate at position {exc.start})") from None
    return text


# Text that travels to the router (protobuf strings are UTF-8).
Text = Annotated[str, AfterValidator(_encodable)]
TokenId = Annotated[int, Field(ge=0, le=UINT32_MAX)]
StopString = Annotated[Text, Field(min_length=1)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="Send a last chunk with the request's token usage.")


class SamplingFields(BaseModel):
    """Parameters both endpoints share (OpenAI's, then vLLM's extras)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = Field(None, description="A served model name or alias; the first served name when absent.")
    temperature: float | None = Field(None, ge=0.0, le=100.0, description="0 is greedy; default 1.")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N, description="Samples per prompt.")
    stop: StopString | list[StopString] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX, description="Sample i uses seed + i.")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    user: str | None = Field(None, description="Accepted for compatibility; not used.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extra sampling parameters.
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX, description="0 or -1 disables it.")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=100.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0, le=INT32_MAX)
    stop_token_ids: list[TokenId] | None = Field(None, max_length=1024)
    skip_special_tokens: bool = True


class CompletionRequest(SamplingFields):
    prompt: (
        Annotated[Text, Field(title="text")]
        | Annotated[list[Text], Field(min_length=1, max_length=MAX_CHOICES, title="texts")]
        | Annotated[list[TokenId], Field(min_length=1, title="token ids")]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]],
                    Field(min_length=1, max_length=MAX_CHOICES, title="token id lists")]
    ) = Field(description="Text, texts, token ids, or token-id lists; each prompt gets n choices.")
    max_tokens: int | None = Field(16, ge=1, le=INT32_MAX)
    echo: bool = Field(False, description="Return the prompt in front of the completion.")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="Top alternatives per token.")
    suffix: str | None = Field(None, description="Not supported: must be absent or empty.")
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="Only best_of == n is supported.")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: Text


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX, description="Deprecated by OpenAI; still honoured.")
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX, description="Takes precedence over max_tokens.")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = Field(True, description="vLLM extra: open an assistant turn after the messages.")
