"""Plain data the typed clients (``tandem.client``) hand back, and the request they build.

Nothing here talks to the network: it converts between these dataclasses and
the router's protobuf messages, so the blocking and the asyncio client share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from services.common.convert import FINISH_REASON_NAMES, sampling_to_proto
from services.engine.sampling_params import SamplingParams
from services.router.retry_hint import parse_retry_after
from tandem._proto.tandem.v1 import common_pb2, router_pb2

# A prompt is text, token ids, or chat messages ({"role": ..., "content": ...}).
Prompt = str | Sequence[int] | Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A token's logprob, its rank in the distribution, and the most likely alternatives (by rank)."""

    token_id: int
    logprob: float
    rank: int
    top: tuple[TopLogprob, ...] = ()


@dataclass
class GenerateDelta:
    """New output of sample ``index`` of a request."""

    request_id: str
    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob]
    finish_reason: str | None  # "stop", "length" or "abort" on the sample's last delta
    stop_reason: str | None  # the stop string or stop token id that ended the sample
    # Set on the request's first delta only: how the router tokenized the prompt.
    prompt_token_ids: list[int] = field(default_factory=list)
    num_prompt_tokens: int = 0
    # On a sample's first delta when prompt logprobs were asked for: one entry per
    # prompt token from the second on.
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Sample:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | None = None


@dataclass
class Completion:
    """A finished request: the prompt as tokenized and its ``n`` samples, by index."""

    request_id: str
    prompt_token_ids: list[int]
    samples: list[Sample]

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.samples)


@dataclass(frozen=True)
class ModelInfo:
    id: str
    max_model_len: int
    fingerprint: str


class TandemRpcError(Exception):
    """A router call failed; ``retry_after_s`` is the router's hint when it refused for load."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


def rpc_error(exc: grpc.RpcError) -> TandemRpcError:
    """The typed form of a failed call (sync or asyncio)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    trailing = exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else None
    return TandemRpcError(code or grpc.StatusCode.UNKNOWN, details or "", parse_retry_after(trailing))


def build_request(
    prompt: Prompt,
    params: SamplingParams | None = None,
    model: str = "",
    request_id: str = "",
    add_generation_prompt: bool = True,
) -> router_pb2.GenerateRequest:
    """The Generate request for a text, token-id or chat prompt."""
    request = router_pb2.GenerateRequest(
        request_id=request_id, model=model, sampling=sampling_to_proto(params or SamplingParams())
    )
    if isinstance(prompt, str):
        request.text = prompt
    elif prompt and all(isinstance(m, Mapping) for m in prompt):
        messages = [router_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in prompt]  # type: ignore[index]
        request.chat.CopyFrom(router_pb2.ChatMessages(messages=messages, add_generation_prompt=add_generation_prompt))
    else:
        request.token_ids.CopyFrom(router_pb2.TokenIds(ids=[int(t) for t in prompt]))  # type: ignore[arg-type]
    return request


def logprob_from_proto(msg: common_pb2.TokenLogprob) -> TokenLogprob:
    return TokenLogprob(msg.token_id, msg.logprob, msg.rank, tuple(TopLogprob(t.token_id, t.logprob) for t in msg.top))


def delta_from_proto(response: router_pb2.GenerateResponse) -> GenerateDelta:
    delta = response.delta
    return GenerateDelta(
        request_id=response.request_id,
        index=response.index,
        token_ids=list(delta.token_ids),
        text=delta.text,
        logprobs=[logprob_from_proto(lp) for lp in delta.logprobs],
        finish_reason=FINISH_REASON_NAMES.get(delta.finish_reason),
        stop_reason=delta.stop_reason or None,
        prompt_token_ids=list(response.prompt_token_ids),
        num_prompt_tokens=response.num_prompt_tokens,
        prompt_logprobs=[logprob_from_proto(lp) for lp in delta.prompt_logprobs],
    )


class CompletionBuilder:
    """Folds a request's deltas into a :class:`Completion`."""

    def __init__(self) -> None:
        self.request_id = ""
        self.prompt_token_ids: list[int] = []
        self.samples: dict[int, Sample] = {}

    def add(self, delta: GenerateDelta) -> None:
        self.request_id = delta.request_id
        if delta.prompt_token_ids:
            self.prompt_token_ids = delta.prompt_token_ids
        sample = self.samples.setdefault(delta.index, Sample(delta.index))
        sample.text += delta.text
        sample.token_ids.extend(delta.token_ids)
        sample.logprobs.extend(delta.logprobs)
        sample.prompt_logprobs.extend(delta.prompt_logprobs)
        if delta.finish_reason is not None:
            sample.finish_reason = delta.finish_reason
            sample.stop_reason = delta.stop_reason

    def build(self) -> Completion:
        return Completion(self.request_id, self.prompt_token_ids, [self.samples[i] for i in sorted(self.samples)])
