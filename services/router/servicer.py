"""The Router service: tokenization, validation and status codes around :class:`Router`."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import grpc
from transformers import PreTrainedTokenizerBase

from services.common.convert import sampling_from_proto
from services.engine.errors import InvalidRequestError, PromptTooLongError
from services.engine.request_validation import validate_prompt
from services.engine.sampling_params import SamplingParams
from services.engine.tokenizer import apply_chat_template
from services.router.retry_hint import retry_after_metadata
from services.router.router import Router, RouterError
from services.router.sample_call import CancelSignal
from tandem._proto.tandem.v1 import common_pb2, router_pb2, router_pb2_grpc

logger = logging.getLogger(__name__)


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(
        self,
        router: Router,
        tokenizer: PreTrainedTokenizerBase,
        model_names: list[str],
        max_model_len: int,
        vocab_size: int,
    ) -> None:
        self.router = router
        self.tokenizer = tokenizer
        self.model_names = model_names
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size

    def prepare(self, request: router_pb2.GenerateRequest) -> tuple[list[int], SamplingParams]:
        """Prompt token ids and validated params; raises ``InvalidRequestError``."""
        params = sampling_from_proto(request.sampling)
        kind = request.WhichOneof("prompt")
        if kind == "text":
            prompt_ids = self.tokenizer.encode(request.text, add_special_tokens=True)
        elif kind == "token_ids":
            prompt_ids = list(request.token_ids.ids)
        elif kind == "chat":
            messages = [{"role": m.role, "content": m.content} for m in request.chat.messages]
            prompt_ids = apply_chat_template(self.tokenizer, messages, request.chat.add_generation_prompt)
        else:
            raise InvalidRequestError("the request has no prompt (set text, token_ids or chat)")
        validate_prompt(prompt_ids, params, self.max_model_len, len(self.tokenizer), self.vocab_size)
        if params.max_tokens is not None and len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise PromptTooLongError(
                f"this model's context is {self.max_model_len} tokens, but the request asks for "
                f"{len(prompt_ids) + params.max_tokens} ({len(prompt_ids)} in the prompt, "
                f"{params.max_tokens} to generate): shorten the prompt or lower max_tokens"
            )
        return prompt_ids, params

    def Generate(self, request: router_pb2.GenerateRequest, context: grpc.ServicerContext) -> Iterator[router_pb2.GenerateResponse]:
        arrival = time.monotonic()
        if request.model and request.model not in self.model_names:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} is not served here; try {self.model_names}")
        try:
            prompt_ids, params = self.prepare(request)
        except InvalidRequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        cancelled = CancelSignal()
        context.add_callback(cancelled.set)
        request_id = request.request_id or uuid.uuid4().hex
        try:
            yield from self.router.generate(request_id, prompt_ids, params, cancelled, arrival)
        except RouterError as exc:
            if exc.retry_after_s is not None:
                context.set_trailing_metadata(retry_after_metadata(exc.retry_after_s))
            context.abort(exc.code, str(exc))

    def Abort(self, request: common_pb2.AbortRequest, context: grpc.ServicerContext) -> common_pb2.AbortResponse:
        return common_pb2.AbortResponse(aborted=self.router.abort(request.request_id))

    def ListModels(self, request: router_pb2.ListModelsRequest, context: grpc.ServicerContext) -> router_pb2.ListModelsResponse:
        cards = [
            router_pb2.ModelCard(id=name, max_model_len=self.max_model_len, fingerprint=self.router.config.model_fingerprint)
            for name in self.model_names
        ]
        return router_pb2.ListModelsResponse(models=cards)
