"""What every gateway endpoint shares: the router client, the tokenizer, the served names."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from services.gateway.errors import model_not_found
from services.gateway.logprobs import TokenTexts
from tandem.client import AsyncTandemClient


@dataclass
class GatewayContext:
    client: AsyncTandemClient
    tokenizer: PreTrainedTokenizerBase
    # The first name is the model's; the others are aliases of it.
    served_model_names: list[str]
    api_key: str | None = None
    token_texts: TokenTexts = field(init=False)

    def __post_init__(self) -> None:
        self.token_texts = TokenTexts(self.tokenizer)

    def resolve_model(self, requested: str | None) -> str:
        """The name to answer with (the one asked for); raises a 404 for an unknown name."""
        if requested is None or requested == "":
            return self.served_model_names[0]
        if requested not in self.served_model_names:
            raise model_not_found(requested, self.served_model_names)
        return requested


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now_s() -> int:
    return int(time.time())
