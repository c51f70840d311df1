"""The unit of memory: one turn, the user's message and the assistant's reply."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import BaseModel

TurnStatus = Literal["pending", "complete", "failed", "interrupted"]


class Turn(BaseModel):
    session_id: str
    turn: int
    user: str
    assistant: str | None = None
    status: TurnStatus = "pending"
    at: int  # epoch seconds the user's message was accepted
    expires_at: int  # epoch seconds; invisible from then on
    principal: str | None = None
    client_message_id: str | None = None
    message_id: str | None = None  # API Gateway's id of the frame that carried the message
    input_tokens: int = 0
    output_tokens: int = 0  # the reply's tokens, as the model reported them
    user_tokens: int = 0  # the message's tokens, calibrated against the model's input count
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0

    @property
    def answered(self) -> bool:
        return self.status == "complete" and self.assistant is not None


class Usage(BaseModel):
    """The model's own count. ``input_tokens`` excludes what was read from or written to the
    prompt cache; ``prompt_tokens`` is the whole prompt."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens


def is_contiguous(turns: list[Turn]) -> bool:
    """True when the turns are consecutive and ascending (a window with no hole)."""
    return all(b.turn == a.turn + 1 for a, b in itertools.pairwise(turns))
