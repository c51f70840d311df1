"""Connecting a WebSocket to a session, and showing a session to a (re)loaded page."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from chatmemory.connections import Binding, BindingUnavailable, ConnectionRegistry
from chatmemory.errors import MemoryUnavailable, NoSession
from chatmemory.history import SessionMemory
from chatmemory.observability import logger
from chatmemory.protocol import HistoryTurn, session_frame
from chatmemory.sender import FrameSender


def _valid_session_id(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value, version=4))
    except ValueError:
        return None


class SessionService:
    def __init__(
        self,
        registry: ConnectionRegistry,
        memory: SessionMemory,
        sender: FrameSender,
        clock: Callable[[], float],
    ) -> None:
        self._registry, self._memory, self._sender, self._clock = registry, memory, sender, clock

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
        self._registry.unbind(connection_id)

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
        )
        self._sender.send(connection_id, frame)
        return frame
