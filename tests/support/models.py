"""A scripted chat model: the project's ``ChatModel`` interface, answering with the replies it
is given (long ones, say), so tests do not depend on what the offline model happens to write."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from chatmemory.llm.base import Prompt, ReplyStream
from chatmemory.memory.tasks import TITLE_TASK
from chatmemory.turns import Usage


class ScriptedModel:
    """Streams ``replies`` in order, one per call, in chunks of ``chunk_chars``; reports
    ``output_tokens`` as given (the script's own count) and the prompt's length as input. A
    conversation's title (the memory worker's, after its first exchange) is not in the script."""

    def __init__(self, replies: list[tuple[str, int]], chunk_chars: int = 400) -> None:
        self._replies = list(replies)
        self._chunk = chunk_chars
        self._lock = threading.Lock()
        self.prompts: list[Prompt] = []

    @contextmanager
    def stream(self, prompt: Prompt) -> Iterator[ReplyStream]:
        with self._lock:
            if TITLE_TASK in prompt.system:
                text, output_tokens = "A scripted conversation", 4
            else:
                self.prompts.append(prompt)
                text, output_tokens = self._replies.pop(0)
        input_tokens = sum(len(m["content"]) for m in prompt.messages) // 4 + len(prompt.system) // 4
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        chunks = (text[i : i + self._chunk] for i in range(0, len(text), self._chunk))
        yield ReplyStream(chunks=chunks, usage=usage)
