"""Conversions between the engine's dataclasses and the wire messages."""

from __future__ import annotations

from services.engine.outputs import PositionLogprobs
from services.engine.sampler import SampleLogprobs
from services.engine.sampling_params import SamplingParams
from tandem._proto.tandem.v1 import common_pb2

FINISH_REASONS = {
    None: common_pb2.FINISH_REASON_UNSPECIFIED,
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "abort": common_pb2.FINISH_REASON_ABORT,
}
FINISH_REASON_NAMES = {v: k for k, v in FINISH_REASONS.items()}


def sampling_to_proto(params: SamplingParams) -> common_pb2.SamplingParams:
    msg = common_pb2.SamplingParams(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        stop=params.stop,
        stop_token_ids=params.stop_token_ids,
        ignore_eos=params.ignore_eos,
        min_tokens=params.min_tokens,
        skip_special_tokens=params.skip_special_tokens,
    )
    for name in ("seed", "max_tokens", "logprobs", "prompt_logprobs"):
        value = getattr(params, name)
        if value is not None:
            setattr(msg, name, value)
    return msg


def sampling_from_proto(msg: common_pb2.SamplingParams) -> SamplingParams:
    """Validated params; raises ``InvalidSamplingParamsError`` for out-of-range values."""

    def optional(name: str) -> int | None:
        return getattr(msg, name) if msg.HasField(name) else None

    return SamplingParams(
        n=msg.n or 1,
        temperature=msg.temperature,
        top_p=msg.top_p,
        top_k=msg.top_k,
        min_p=msg.min_p,
        repetition_penalty=msg.repetition_penalty,
        presence_penalty=msg.presence_penalty,
        frequency_penalty=msg.frequency_penalty,
        seed=optional("seed"),
        stop=list(msg.stop),
        stop_token_ids=list(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
        max_tokens=optional("max_tokens"),
        min_tokens=msg.min_tokens,
        logprobs=optional("logprobs"),
        prompt_logprobs=optional("prompt_logprobs"),
        skip_special_tokens=msg.skip_special_tokens,
    )


def sample_logprobs_from_proto(msg: common_pb2.TokenLogprob) -> SampleLogprobs:
    return SampleLogprobs(
        token_id=msg.token_id,
        logprob=msg.logprob,
        rank=msg.rank,
        top_token_ids=[t.token_id for t in msg.top],
        top_logprobs=[t.logprob for t in msg.top],
    )


def position_logprobs_to_proto(token_id: int, position: PositionLogprobs) -> common_pb2.TokenLogprob:
    """An output position's logprobs (chosen token first, then the top ones by rank)."""
    chosen = position[token_id]
    top = sorted(((lp.rank, tid, lp.logprob) for tid, lp in position.items()), key=lambda t: t[0])
    return common_pb2.TokenLogprob(
        token_id=token_id,
        logprob=chosen.logprob,
        rank=chosen.rank,
        top=[common_pb2.TopLogprob(token_id=tid, logprob=value) for _, tid, value in top],
    )
