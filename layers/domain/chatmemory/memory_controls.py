"""What a user controls about memory over the wire: the session's strategy and their long-term
memory (``setMemory``), a copy of it (``getUserMemory``) and its erasure (``forgetUserMemory``).

Everything acts for the connection's principal: the session only when its turns are theirs,
the long-term memory only their own partition (``user#<principal>``). A request that is refused
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from chatmemory.config import StrategyName
from chatmemory.errors import BadRequest, Forbidden, MemoryUnavailable
from chatmemory.history import SessionMemory
from chatmemory.observability import logger
from chatmemory.protocol import memory_frame, user_memory_frames
from chatmemory.sender import FrameSender
from chatmemory.sessions import SessionService
from chatmemory.storage.bindings import Binding
from chatmemory.storage.memory_state import MemoryStateRepository
from chatmemory.storage.user_memory import UserMemory, UserMemoryRepository, UserMemoryUnavailable, eligible

T = TypeVar("T")

NOT_ELIGIBLE = (
    "Memory across conversations needs you to be signed in or to keep your guest token; "
    "this connection is anonymous."
)


class MemoryControls:
    def __init__(
        self,
        sessions: SessionService,
        memory: SessionMemory,
        state: MemoryStateRepository,
        users: UserMemoryRepository,
        sender: FrameSender,
        clock: Callable[[], float],
    ) -> None:
        self._sessions, self._memory, self._state, self._users = sessions, memory, state, users
        self._sender, self._clock = sender, clock

    # ---- setMemory ----------------------------------------------------------------------

    def set_memory(
        self, connection_id: str, strategy: StrategyName | None, long_term: bool | None
    ) -> dict[str, Any]:
        """Give the bound session its own strategy and/or turn the principal's long-term memory
        on (keeping the session's facts so far) or off (erasing it); answer with ``memory``.
        Every check runs before anything is written."""
        binding = self._sessions.bound(connection_id)
        session_id = str(binding.session_id)
        if long_term is not None and not eligible(binding.principal):
            raise Forbidden(NOT_ELIGIBLE)
        self._check_owner(binding)
        if strategy is not None:
            self._state.set_strategy(session_id, strategy)
            logger.info("session strategy set", extra={"strategy": strategy})
        if long_term is True:
            state = self._state.read_stored(session_id)
            if state is None:
                raise MemoryUnavailable()
            # What this chat said so far is not collected, besides its facts.
            said = self._memory.breakers.dynamodb.require(self._memory.store.last_turn_number, session_id)
            self._user_op(
                lambda: self._users.opt_in(
                    binding.principal, session_id, state.summarized_through, state.facts, said
                )
            )
            logger.info("long-term memory on", extra={"facts": len(state.facts)})
        elif long_term is False:
            self._user_op(lambda: self._users.forget_all(binding.principal))
            logger.info("long-term memory off and erased")
        if long_term is None:
            enabled = self._read_user(binding).long_term if eligible(binding.principal) else False
        else:
            enabled = long_term
        current = strategy or self._sessions.strategy_of(session_id) or self._memory.settings.strategy
        frame = memory_frame(session_id, current, enabled)
        self._sender.send(connection_id, frame)
        return frame

    # ---- getUserMemory ------------------------------------------------------------------

    def get_user_memory(self, connection_id: str) -> list[dict[str, Any]]:
        """Send the principal's long-term memory: the opt-in and every fact kept, with where
        it came from (``userMemory`` frames, each under 32 KB)."""
        binding = self._sessions.bound(connection_id)
        memory = self._read_user(binding) if eligible(binding.principal) else UserMemory()
        return self._send_user_memory(connection_id, memory)

    # ---- forgetUserMemory ---------------------------------------------------------------

    def forget_user_memory(self, connection_id: str, key: str | None) -> list[dict[str, Any]]:
        """Erase one fact (by key) or the whole long-term memory, opt-in included, from
        DynamoDB and Redis; answer with what is left."""
        binding = self._sessions.bound(connection_id)
        if not eligible(binding.principal):
            raise Forbidden(NOT_ELIGIBLE)
        if key is None:
            self._user_op(lambda: self._users.forget_all(binding.principal))
            logger.info("long-term memory erased")
            memory = UserMemory()
        else:
            memory, found = self._user_op(lambda: self._users.forget_fact(binding.principal, key))
            if not found:
                raise BadRequest(f'There is no remembered fact "{key[:80]}".')
            logger.info("long-term fact erased")
        return self._send_user_memory(connection_id, memory)

    # ---- helpers ------------------------------------------------------------------------

    def _send_user_memory(self, connection_id: str, memory: UserMemory) -> list[dict[str, Any]]:
        frames = user_memory_frames(memory.long_term, [f.frame() for f in memory.facts], int(self._clock()))
        for frame in frames:
            self._sender.send(connection_id, frame)
        return frames

    def _read_user(self, binding: Binding) -> UserMemory:
        return self._user_op(lambda: self._users.read_stored(binding.principal))

    @staticmethod
    def _user_op(op: Callable[[], T]) -> T:
        try:
            return op()
        except UserMemoryUnavailable as exc:
            raise MemoryUnavailable() from exc

    def _check_owner(self, binding: Binding) -> None:
        """The session's turns must all be this principal's (a session with none yet was made
        for this connection, so it is)."""
        history = self._memory.load(str(binding.session_id), context=True)
        if history.mode == "stateless":
            raise MemoryUnavailable()
        if any(t.principal != binding.principal for t in history.turns):
            logger.warning(
                "memory change on another principal's session refused",
                extra={"session_id": binding.session_id},
            )
            raise Forbidden("This conversation belongs to someone else.")
