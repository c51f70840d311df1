"""A principal's conversations: list them, switch this connection to one, rename one.

The list is the table's ``by_activity`` index over the sessions' meta items
(``chatmemory.storage.session_meta``), kept by each turn after its ``done``
(``SessionMemory.note_activity``) and titled by the memory worker after the first exchange.
Another principal's session answers exactly as an unknown one does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatmemory.errors import BadRequest
from chatmemory.history import SessionMemory
from chatmemory.observability import logger
from chatmemory.protocol import renamed_frame, sessions_frame
from chatmemory.sender import FrameSender
from chatmemory.sessions import SessionService, valid_session_id
from chatmemory.storage.session_meta import BadCursor
from chatmemory.storage.user_memory import eligible

LIST_PAGE_SIZE = 20
UNKNOWN = "There is no such conversation."


class SessionList:
    def __init__(
        self,
        sessions: SessionService,
        memory: SessionMemory,
        sender: FrameSender,
        clock: Callable[[], float],
    ) -> None:
        self._sessions, self._memory, self._sender, self._clock = sessions, memory, sender, clock

    def list_sessions(self, connection_id: str, cursor: str | None, limit: int | None) -> dict[str, Any]:
        """Send a ``sessions`` frame: a page of the principal's live conversations, newest
        activity first. A connection without an identity has no list (an empty one)."""
        binding = self._sessions.bound(connection_id)
        listings: list[Any] = []
        next_cursor = None
        if eligible(binding.principal):
            try:
                listings, next_cursor = self._memory.breakers.listing.require(
                    self._memory.meta.list_sessions,
                    binding.principal,
                    int(self._clock()),
                    limit or LIST_PAGE_SIZE,
                    cursor,
                    warn="could not list the sessions",
                )
            except BadCursor:
                raise BadRequest('Field "cursor" is invalid: it is not a page of this list.') from None
        frame = sessions_frame(listings, next_cursor, binding.session_id)
        self._sender.send(connection_id, frame)
        return frame

    def open_session(self, connection_id: str, session_id: str, turn: int | None) -> None:
        """Bind the connection to one of the principal's conversations and send its ``session``
        frame, then with ``turn`` that turn's ``turn`` frames (the page opens it there)."""
        binding = self._sessions.bound(connection_id)
        target = valid_session_id(session_id)
        if target is None or not self._sessions.resumable(target, binding.principal):
            raise BadRequest(UNKNOWN)
        if target != binding.session_id:
            self._sessions.rebind(binding, target)
            logger.info("session opened")
        self._sessions.send_session(connection_id)
        if turn is not None:
            self._sessions.send_turn(connection_id, turn)

    def rename_session(self, connection_id: str, title: str, session_id: str | None) -> dict[str, Any]:
        """Give a listed conversation of the principal's its title (the bound one by default);
        answer ``renamed``. A session not listed yet (no answered turn) cannot be renamed."""
        binding = self._sessions.bound(connection_id)
        target = valid_session_id(session_id) if session_id is not None else binding.session_id
        renamed = (
            target is not None
            and eligible(binding.principal)
            and self._memory.breakers.listing.require(
                self._memory.meta.set_title, target, binding.principal, title, warn="could not rename"
            )
        )
        if not renamed:
            raise BadRequest(UNKNOWN)
        assert target is not None
        frame = renamed_frame(target, title)
        self._sender.send(connection_id, frame)
        return frame
