"""One turn, start to finish: validate, persist the user's message, load memory, stream the
model's reply to the client, store the reply, say ``done``."""

from __future__ import annotations

import time
from collections.abc import Callable

from aws_lambda_powertools.metrics import MetricUnit

from chatmemory.config import Settings
from chatmemory.connections import Binding
from chatmemory.errors import ClientGone, EmptyMessage, LlmUnavailable, MessageTooLarge
from chatmemory.history import History, SessionMemory, StartedTurn
from chatmemory.llm.base import ChatModel, Message, Prompt
from chatmemory.observability import logger, metrics, tracer
from chatmemory.protocol import NoticeCode, done_frame, notice_frame
from chatmemory.sender import DeltaBatcher, FrameSender
from chatmemory.turns import Usage

NOTICES = {
    "cache_only": (
        NoticeCode.MEMORY_DEGRADED,
        "My long-term memory is unavailable right now, so I am answering from recent memory only. "
        "This exchange may not be remembered later.",
    ),
    "stateless": (
        NoticeCode.MEMORY_UNAVAILABLE,
        "I can't reach my memory right now, so I am answering without our earlier conversation. "
        "If it matters, briefly remind me what we were discussing.",
    ),
}
NOT_STORED = (
    NoticeCode.NOT_REMEMBERED,
    "This reply could not be saved, so I may not remember it in our next turns.",
)


def validate_message(message: str, max_chars: int) -> str:
    if not message.strip():
        raise EmptyMessage()
    if len(message) > max_chars:
        raise MessageTooLarge(len(message), max_chars)
    return message


def build_prompt(system: str, history: History, message: str, max_tokens: int) -> Prompt:
    """The answered turns of the window as alternating messages, then the new message."""
    messages: list[Message] = []
    for turn in history.turns:
        if turn.answered and turn.assistant:
            messages.append({"role": "user", "content": turn.user})
            messages.append({"role": "assistant", "content": turn.assistant})
    messages.append({"role": "user", "content": message})
    return Prompt(system=system, messages=messages, max_tokens=max_tokens)


class Conversation:
    def __init__(
        self,
        memory: SessionMemory,
        model: ChatModel,
        sender: FrameSender,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._memory, self._model, self._sender = memory, model, sender
        self._settings, self._clock = settings, clock

    @tracer.capture_method(capture_response=False)
    def send_message(self, binding: Binding, message: str, client_message_id: str | None) -> None:
        """Answer one message. Raises ``ChatError`` subclasses for the caller to turn into an
        ``error`` frame; the user's message is stored before the model is called."""
        text = validate_message(message, self._settings.memory.max_message_chars)
        if binding.session_id is None:
            started = self._memory.stateless_turn(text)
        else:
            started = self._memory.begin_turn(binding.session_id, binding.principal, text, client_message_id)
        mode = started.history.mode
        metrics.add_metric(name=f"MemoryMode_{mode}", unit=MetricUnit.Count, value=1)
        if mode in NOTICES:
            self._sender.send(binding.connection_id, notice_frame(*NOTICES[mode]))
        prompt = build_prompt(
            self._settings.llm.system_prompt, started.history, text, self._settings.llm.max_output_tokens
        )
        reply, usage = self._stream_reply(binding, started, prompt)
        stored = self._memory.finish_turn(started, reply, "complete", usage)
        if started.persisted and not stored:
            self._sender.send(binding.connection_id, notice_frame(*NOT_STORED))
        self._sender.send(
            binding.connection_id,
            done_frame(started.turn.turn, mode, False, usage.input_tokens, usage.output_tokens),
        )
        self._memory.slide_expiry(started)  # after done: the user does not wait for it
        metrics.add_metric(name="InputTokens", unit=MetricUnit.Count, value=usage.input_tokens)
        metrics.add_metric(name="OutputTokens", unit=MetricUnit.Count, value=usage.output_tokens)

    def _stream_reply(self, binding: Binding, started: StartedTurn, prompt: Prompt) -> tuple[str, Usage]:
        batcher = DeltaBatcher(
            self._sender,
            binding.connection_id,
            started.turn.turn,
            self._settings.stream.flush_chars,
            self._settings.stream.flush_interval_seconds,
            self._clock,
        )
        parts: list[str] = []
        began = self._clock()
        try:
            with self._model.stream(prompt) as reply:
                for chunk in reply.chunks:
                    if not parts:
                        metrics.add_metric(
                            name="FirstTokenLatency",
                            unit=MetricUnit.Milliseconds,
                            value=1000 * (self._clock() - began),
                        )
                    parts.append(chunk)
                    batcher.add(chunk)
                batcher.flush()
        except LlmUnavailable as exc:
            # The user's message stays stored; a half reply is kept only as "failed".
            self._memory.finish_turn(started, "".join(parts), "failed", Usage())
            raise LlmUnavailable(exc.detail, saved=started.persisted) from exc
        except ClientGone:
            # Leaving the stream's context closed the model request: nobody pays for tokens
            # nobody reads. What was said is kept, marked as interrupted, not complete.
            logger.info("client gone mid-stream", extra={"turn": started.turn.turn})
            self._memory.finish_turn(started, "".join(parts), "interrupted", Usage())
            raise
        metrics.add_metric(
            name="ModelLatency", unit=MetricUnit.Milliseconds, value=1000 * (self._clock() - began)
        )
        return "".join(parts), reply.usage
