"""Connecting a WebSocket to a session, and showing a session to a (re)loaded page."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from chatmemory.config import StrategyName
from chatmemory.connections import Binding, BindingUnavailable, ConnectionRegistry
from chatmemory.errors import Forbidden, MemoryUnavailable, NoSession
from chatmemory.history import DYNAMODB_FAULTS, SessionMemory
from chatmemory.memory.repository import MemoryStateRepository
from chatmemory.observability import logger, metrics
from chatmemory.protocol import HistoryTurn, session_frame
from chatmemory.sender import FrameSender


def _valid_session_id(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value, version=4))
    except ValueError:
        return None


def end_conversation(registry: ConnectionRegistry, memory: SessionMemory, connection_id: str) -> None:
    """Forget the connection's binding (the session stays) and count the conversation's end:
    the product analytics' ``ConversationEnded`` and ``TurnsPerSession``, the turn number the
    session had reached when the connection closed (not counted while memory is unreachable)."""
    binding = registry.unbind(connection_id)
    metrics.add_metric(name="ConversationEnded", unit=MetricUnit.Count, value=1)
    if binding is None or binding.session_id is None:
        return
    history = memory.load(binding.session_id)
    if history.source != "none":
        metrics.add_metric(name="TurnsPerSession", unit=MetricUnit.Count, value=history.last_turn_number)


class SessionService:
    def __init__(
        self,
        registry: ConnectionRegistry,
        memory: SessionMemory,
        sender: FrameSender,
        clock: Callable[[], float],
        memory_state: MemoryStateRepository | None = None,
    ) -> None:
        self._registry, self._memory, self._sender, self._clock = registry, memory, sender, clock
        self._memory_state = memory_state

    def connect(
        self,
        connection_id: str,
        requested_session_id: str | None,
        principal: str,
        guest_token: str | None = None,
    ) -> Binding:
        """Bind the connection to the requested session when it has history and belongs to
        this principal, else to a new one.

        Session ids are made here (UUIDv4, so partitions spread evenly), never by clients: an
        unknown, expired or someone else's id starts a fresh session, and the client cannot
        tell which of the three it was.
        """
        session_id = _valid_session_id(requested_session_id)
        if session_id is not None and not self._resumable(session_id, principal):
            session_id = None
        binding = Binding(
            connection_id=connection_id,
            session_id=session_id or str(uuid.uuid4()),
            principal=principal,
            connected_at=int(self._clock()),
            guest_token=guest_token,
        )
        self._registry.bind(binding)
        return binding

    def _resumable(self, session_id: str, principal: str) -> bool:
        turns = self._memory.load(session_id).turns
        if not turns:
            return False
        if turns[-1].principal != principal:
            logger.warning("resume of another principal's session refused", extra={"session_id": session_id})
            return False
        return True

    def disconnect(self, connection_id: str) -> None:
        end_conversation(self._registry, self._memory, connection_id)

    def binding(self, connection_id: str) -> Binding:
        """The connection's binding. While memory is unreachable the session is unknown
        (``session_id`` None): the conversation then answers statelessly rather than not at all."""
        try:
            binding = self._registry.lookup(connection_id)
        except BindingUnavailable:
            return Binding(connection_id=connection_id, session_id=None, principal="unknown", connected_at=0)
        if binding is None:
            raise NoSession()
        return binding

    def new_session(self, connection_id: str, strategy: StrategyName | None = None) -> dict[str, Any]:
        """Bind the connection to a fresh session (the old one stays, resumable by its owner)
        and send its ``session`` frame. With ``strategy``, the new session gets its own memory
        strategy, stored before the connection moves to it (a failure leaves it where it was)."""
        current = self.binding(connection_id)
        session_id = str(uuid.uuid4())
        if strategy is not None:
            if self._memory_state is None:
                raise MemoryUnavailable()
            try:
                self._memory_state.set_strategy(session_id, strategy)
            except DYNAMODB_FAULTS as exc:
                raise MemoryUnavailable() from exc
        return self._announce(self.rebind(current, session_id), strategy)

    def fresh_session(self, binding: Binding) -> Binding:
        """Bind the connection to a fresh session and send its ``session`` frame."""
        fresh = self.rebind(binding)
        self._announce(fresh)
        return fresh

    def _announce(self, binding: Binding, strategy: StrategyName | None = None) -> dict[str, Any]:
        frame = session_frame(
            str(binding.session_id),
            resumed=False,
            history=[],
            memory_mode="full",
            guest_token=binding.guest_token,
            memory_strategy=strategy or self._memory.settings.strategy,
        )
        self._sender.send(binding.connection_id, frame)
        return frame

    def rebind(self, binding: Binding, session_id: str | None = None) -> Binding:
        """Bind the connection to a fresh session (``session_id``, else a new one), for the
        same principal."""
        fresh = binding.model_copy(
            update={"session_id": session_id or str(uuid.uuid4()), "connected_at": int(self._clock())}
        )
        try:
            self._registry.bind(fresh)
        except ConnectionError as exc:
            raise MemoryUnavailable() from exc
        return fresh

    def send_older(self, connection_id: str, before: int) -> dict[str, Any]:
        """Send a ``session`` frame with the N turns numbered below ``before`` (oldest first)
        and ``hasMore``: whether there are turns older still."""
        binding = self.binding(connection_id)
        if binding.session_id is None:
            raise MemoryUnavailable()
        size, now = self._memory.settings.history_turns, int(self._clock())
        try:
            page = self._memory.breakers.dynamodb.call(
                self._memory.store.turns_before, binding.session_id, before, size + 1
            )
            last = self._memory.breakers.dynamodb.call(
                self._memory.store.last_turn_number, binding.session_id
            )
        except DYNAMODB_FAULTS as exc:
            raise MemoryUnavailable() from exc
        if any(t.principal != binding.principal for t in page):
            logger.warning(
                "page of another principal's session refused", extra={"session_id": binding.session_id}
            )
            raise Forbidden("This conversation belongs to someone else.")
        # TTLs grow with the turn number: past the first expired turn, every older one is expired too.
        live = [t for t in page if t.expires_at > now]
        shown = live[:size]
        frame = session_frame(
            binding.session_id,
            resumed=last > 0,
            history=[
                HistoryTurn(turn=t.turn, user=t.user, assistant=t.assistant, at=t.at) for t in reversed(shown)
            ],
            memory_mode="full",
            guest_token=binding.guest_token,
            has_more=len(live) > size,
        )
        self._sender.send(connection_id, frame)
        return frame

    def send_session(self, connection_id: str) -> dict[str, Any]:
        """Send the ``session`` frame: the id, whether it was resumed, and the last N turns."""
        binding = self.binding(connection_id)
        if binding.session_id is None:
            raise MemoryUnavailable()
        history = self._memory.load(binding.session_id)
        frame = session_frame(
            binding.session_id,
            resumed=bool(history.turns),
            history=[
                HistoryTurn(turn=t.turn, user=t.user, assistant=t.assistant, at=t.at) for t in history.turns
            ],
            memory_mode=history.mode,
            guest_token=binding.guest_token,
            memory_strategy=self.strategy_of(binding.session_id) if history.mode != "stateless" else None,
        )
        self._sender.send(connection_id, frame)
        return frame

    def strategy_of(self, session_id: str) -> StrategyName | None:
        """The session's memory strategy (its own or the deployment's); ``None`` when its
        memory state cannot be read."""
        if self._memory_state is None:
            return None
        state = self._memory_state.get(session_id)
        if state is None:
            return None
        return state.strategy or self._memory.settings.strategy
