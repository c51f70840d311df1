"""What the conversation needs from a model: a prompt in, text chunks and usage out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict

from chatmemory.turns import Usage


class Message(TypedDict):
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class Prompt:
    system: str
    messages: list[Message]
    max_tokens: int
    # Mark the prompt cache's breakpoint after this message (-1: after the system prompt);
    # ``None``: no breakpoint.
    cache_after: int | None = None


@dataclass
class ReplyStream:
    """Text chunks as the model produces them; ``usage`` and ``truncated`` (the reply stopped at
    ``max_tokens``) are final once they are exhausted."""

    chunks: Iterator[str]
    usage: Usage = field(default_factory=Usage)
    truncated: bool = False


class ChatModel(Protocol):
    def stream(self, prompt: Prompt) -> AbstractContextManager[ReplyStream]:
        """Open a streamed reply. Leaving the context early stops the generation.

        Raises ``LlmUnavailable`` (on opening or while iterating) when the model fails.
        """
        ...
