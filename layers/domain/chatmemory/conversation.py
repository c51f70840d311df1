"""One turn, start to finish: validate, persist the user's message, load memory, plan the
context with the memory strategy, stream the model's reply to the client, store the reply,
say ``done``, then ask for the summary and facts to catch up."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from chatmemory.config import Settings
from chatmemory.errors import (
    ClientGone,
    DuplicateTurn,
    EmptyMessage,
    InProgress,
    LlmUnavailable,
    MessageTooLarge,
    NoSession,
    NotAnsweredTwice,
    SessionErased,
)
from chatmemory.history import History, SessionMemory, StartedTurn
from chatmemory.llm.base import ChatModel, Message, Prompt
from chatmemory.memory.manager import MemoryManager, TurnContext
from chatmemory.memory.tokens import TokenEstimator
from chatmemory.observability import logger, metrics, tracer
from chatmemory.protocol import MAX_FRAME_BYTES, NoticeCode, done_frame, notice_frame
from chatmemory.quotas import Quotas
from chatmemory.sender import DeltaBatcher, FrameSender
from chatmemory.sessions import SessionService
from chatmemory.storage.bindings import Binding
from chatmemory.turns import Turn, TurnStatus, Usage

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
# The same situations when the turn is deferred: it waits in the outbox for DynamoDB.
DEFERRED_NOTICES = {
    "cache_only": (
        NoticeCode.MEMORY_DEGRADED,
        "My long-term memory is unavailable right now, so I am answering from recent memory only. "
        "This exchange will be saved when my memory is back.",
    ),
    "stateless": (
        NoticeCode.MEMORY_UNAVAILABLE,
        "I can't reach my memory right now, so I am answering without our earlier conversation. "
        "This exchange will be saved when my memory is back; if something earlier matters, "
        "briefly remind me.",
    ),
}
NOT_STORED = (
    NoticeCode.NOT_REMEMBERED,
    "This reply could not be saved, so I may not remember it in our next turns.",
)
REPLY_DEFERRED = (
    NoticeCode.MEMORY_DEGRADED,
    "My memory stopped answering while I replied: this reply will be saved when it is back.",
)
TRUNCATED = (
    NoticeCode.MEMORY_TRUNCATED,
    "Our conversation no longer fits in what I can read at once, so I am answering without some of "
    "its older parts. If something from earlier matters, mention it again.",
)


def validate_message(message: str, max_chars: int) -> str:
    if not message.strip():
        raise EmptyMessage()
    if len(message) > max_chars:
        raise MessageTooLarge(len(message), max_chars)
    return message


def build_prompt(system: str, history: History, message: str, max_tokens: int) -> Prompt:
    """The answered turns of the window as alternating messages, then the new message (no
    strategy, no budget: the memory manager's plan is what turns use)."""
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
        manager: MemoryManager | None = None,
        sessions: SessionService | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self._memory, self._model, self._sender, self._sessions = memory, model, sender, sessions
        self._quotas = quotas
        self._settings, self._clock = settings, clock
        self._manager = manager or MemoryManager(
            settings.memory, TokenEstimator(settings.memory.chars_per_token)
        )

    @tracer.capture_method(capture_response=False)
    def send_message(
        self, binding: Binding, message: str, client_message_id: str | None, message_id: str | None = None
    ) -> None:
        """Answer one message. Raises ``ChatError`` subclasses for the caller to turn into an
        ``error`` frame; the user's message is stored before the model is called.

        A message already taken (a retry with the same ``client_message_id``, or the same frame,
        ``message_id``, delivered twice) is never stored or answered twice: see ``_replay``."""
        began = self._clock()
        began_ms = int(1000 * self._memory.clock())  # wall time: a stop asked after it stops this turn
        text = validate_message(message, self._settings.memory.max_message_chars)
        system = self._settings.llm.system_prompt
        self._manager.check_message(system, text)
        # Over a quota: refused here, before anything is stored, embedded or asked of the model.
        admission = self._quotas.admit(binding.principal) if self._quotas is not None else None
        ahead = self._manager.embed_ahead(text) if binding.session_id is not None else {}
        if binding.session_id is None:
            started = self._memory.stateless_turn(text)
        else:
            try:
                started = self._begin(binding, text, client_message_id, message_id)
            except DuplicateTurn as duplicate:
                self._replay(binding, duplicate.turn, message_id)
                return
        mode = started.history.mode
        metrics.add_metric(name=f"MemoryMode_{mode}", unit=MetricUnit.Count, value=1)
        if mode in NOTICES:
            notices = DEFERRED_NOTICES if started.deferred else NOTICES
            self._sender.send(binding.connection_id, notice_frame(*notices[mode]))
        context = self._manager.prepare(started, system, text, self._settings.llm.max_output_tokens, ahead)
        if context.plan.truncated:
            self._sender.send(binding.connection_id, notice_frame(*TRUNCATED))
        reply, usage, stopped = self._stream_reply(binding, started, context.prompt, began_ms)
        user_tokens = self._manager.account(context, text, usage)
        status: TurnStatus = "interrupted" if stopped else "complete"
        stored = self._memory.finish_turn(started, reply, status, usage, user_tokens)
        if (started.persisted or started.deferred) and not stored:
            self._sender.send(binding.connection_id, notice_frame(*NOT_STORED))
        elif started.reply_deferred:
            self._sender.send(binding.connection_id, notice_frame(*REPLY_DEFERRED))
        done = self._done(started, context, usage)
        if stopped:
            done["stopped"] = True  # the reply is what was shown until then, stored as interrupted
        spent = usage.input_tokens + usage.output_tokens
        left = self._quotas.left(admission, spent) if self._quotas and admission else None
        if left is not None:
            done["quota"] = left
        self._sender.send(binding.connection_id, done)
        # From the message to its done frame: what the user waited (alarmed on at p99).
        metrics.add_metric(
            name="TurnLatency", unit=MetricUnit.Milliseconds, value=1000 * (self._clock() - began)
        )
        # After done: the user waits for none of these.
        if self._quotas is not None:
            self._quotas.charge(binding.principal, spent)
        self._memory.note_activity(started)  # before the worker, which titles a new session
        expiry_due = self._memory.expiry_due(started, context.state.turns_expire_at)
        self._manager.after_turn(started, context, expiry_due)
        metrics.add_metric(name="InputTokens", unit=MetricUnit.Count, value=usage.input_tokens)
        metrics.add_metric(name="OutputTokens", unit=MetricUnit.Count, value=usage.output_tokens)
        metrics.add_metric(
            name="CacheReadInputTokens", unit=MetricUnit.Count, value=usage.cache_read_input_tokens
        )
        metrics.add_metric(
            name="CacheCreationInputTokens", unit=MetricUnit.Count, value=usage.cache_creation_input_tokens
        )

    def preview(self, binding: Binding, message: str) -> TurnContext:
        """The context ``message`` would be answered with now, as ``send_message`` plans it,
        without storing the message or calling the model (the evaluation asks its benchmark
        questions this way). Keep it in step with ``send_message``'s path up to the model call."""
        text = validate_message(message, self._settings.memory.max_message_chars)
        system = self._settings.llm.system_prompt
        self._manager.check_message(system, text)
        if binding.session_id is None:
            started = self._memory.stateless_turn(text)
        else:
            history = self._memory.load(binding.session_id, context=True)
            turn = Turn(
                session_id=binding.session_id,
                turn=history.last_turn_number + 1,
                user=text,
                at=int(self._memory.clock()),
                expires_at=int(self._memory.clock()) + self._memory.settings.session_ttl_seconds,
                principal=binding.principal,
            )
            started = StartedTurn(turn, history, persisted=False)
        return self._manager.prepare(started, system, text, self._settings.llm.max_output_tokens)

    def _begin(
        self, binding: Binding, text: str, client_message_id: str | None, message_id: str | None
    ) -> StartedTurn:
        assert binding.session_id is not None
        try:
            return self._memory.begin_turn(
                binding.session_id, binding.principal, text, client_message_id, message_id
            )
        except SessionErased:
            # Another connection erased this session: this one continues in a fresh session,
            # and is told so (a session frame) before the turn's frames.
            if self._sessions is None:
                raise NoSession() from None
            logger.info("bound session was erased; continuing in a fresh one")
            fresh = self._sessions.fresh_session(binding)
            assert fresh.session_id is not None
            return self._memory.begin_turn(
                fresh.session_id, fresh.principal, text, client_message_id, message_id
            )

    def _replay(self, binding: Binding, turn: Turn, message_id: str | None) -> None:
        """The message is stored already. The same frame delivered twice (an asynchronous
        hand-off is at-least-once): the first delivery answers, this one does nothing. A
        client's retry: the stored answer again, no model call. Still being answered: ``busy``.
        Failed earlier: that failure again (a new message retries)."""
        metrics.add_metric(name="DuplicateMessage", unit=MetricUnit.Count, value=1)
        if message_id and turn.message_id == message_id:
            logger.info("frame delivered twice; answered once", extra={"turn": turn.turn})
            return
        logger.info("retried message; replaying its turn", extra={"turn": turn.turn, "status": turn.status})
        stale = self._memory.clock() - turn.at >= self._memory.settings.turn_timeout_seconds
        if turn.status == "pending" and not stale:
            raise InProgress()
        if turn.assistant:
            batcher = DeltaBatcher(
                self._sender, binding.connection_id, turn.turn, MAX_FRAME_BYTES, 0.0, self._clock
            )
            batcher.add(turn.assistant)
            batcher.flush()
        if turn.status != "complete":
            raise NotAnsweredTwice()
        frame = done_frame(turn.turn, "full", False, turn.input_tokens, turn.output_tokens)
        frame["replayed"] = True
        self._sender.send(binding.connection_id, frame)

    @staticmethod
    def _done(started: StartedTurn, context: TurnContext, usage: Usage) -> dict[str, Any]:
        own = [t for t in context.plan.recalled if t.session_id == started.turn.session_id]
        other = [t for t in context.plan.recalled if t.session_id != started.turn.session_id]
        return done_frame(
            started.turn.turn,
            started.history.mode,
            context.plan.truncated,
            usage.input_tokens,
            usage.output_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            budget=context.plan.budget.frame(),
            strategy=context.strategy.name,
            retrieval=context.plan.recall if context.strategy.retrieve else None,
            retrieved_turns=[t.turn for t in own] if context.strategy.retrieve else None,
            cross_session=context.across.mode if context.across is not None else None,
            cross_session_turns=(
                [{"sessionId": t.session_id, "turn": t.turn} for t in other]
                if context.across is not None
                else None
            ),
        )

    def _stream_reply(
        self, binding: Binding, started: StartedTurn, prompt: Prompt, began_ms: int
    ) -> tuple[str, Usage, bool]:
        """The reply as streamed, its usage, and whether the user stopped it (``stopReply``):
        then the model's stream is closed at once, and what was shown is the reply."""
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
        stopped = False
        looked = began
        session_id = started.turn.session_id
        every = self._settings.stream.stop_check_seconds
        try:
            with self._model.stream(prompt) as reply:
                for chunk in reply.chunks:
                    if started.persisted and self._clock() - looked >= every:
                        looked = self._clock()
                        if self._memory.stop_requested(session_id, began_ms):
                            stopped = True
                            break  # leaving the stream's context closes the model request
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
            # The user's message stays stored; a half reply is kept only as "failed". What the
            # user was shown is what was stored: the batched rest goes out before the error.
            self._memory.finish_turn(started, "".join(parts), "failed", Usage())
            with contextlib.suppress(ClientGone):
                batcher.flush()
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
        if stopped:
            logger.info("reply stopped by the user", extra={"turn": started.turn.turn})
            metrics.add_metric(name="ReplyStopped", unit=MetricUnit.Count, value=1)
        return "".join(parts), reply.usage, stopped
