"""A user's rights over their data: erase a session (``deleteSession``) and take a copy of it
(``exportSession``).

Both act on the session the connection is bound to, and only when every turn of it was
written for the connection's principal: the binding says which session, its items say whose.
Erasure is complete: every item of the session in DynamoDB (its turns and its meta item with
the summary and facts) and every Redis key of it (the turn window and the memory state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from chatmemory.cache import TurnCache
from chatmemory.connections import Binding
from chatmemory.errors import Forbidden, MemoryUnavailable
from chatmemory.history import DYNAMODB_FAULTS, REDIS_FAULTS, SessionMemory
from chatmemory.observability import logger
from chatmemory.protocol import deleted_frame, export_frames, session_frame
from chatmemory.sender import FrameSender
from chatmemory.sessions import SessionService
from chatmemory.store import META_TURN

# A turn being written while the session is erased may land after the first pass: erasure
# reads the partition again until it is empty, this many times at most.
_ERASE_PASSES = 3


class DataRights:
    def __init__(
        self,
        sessions: SessionService,
        memory: SessionMemory,
        sender: FrameSender,
        clock: Callable[[], float],
    ) -> None:
        self._sessions, self._memory, self._sender, self._clock = sessions, memory, sender, clock

    # ---- deleteSession ------------------------------------------------------------------

    def delete_session(self, connection_id: str) -> list[dict[str, Any]]:
        """Erase the bound session, bind the connection to a fresh one, and send ``deleted``
        then the new ``session`` frame. Someone else's session: ``Forbidden``, nothing erased.
        A store failing midway: ``MemoryUnavailable`` and the binding unchanged, so the client
        can simply retry."""
        binding = self._owned_binding(connection_id)
        session_id = str(binding.session_id)
        for _ in range(_ERASE_PASSES):
            owners = self._dynamodb(self._memory.store.item_owners, session_id)
            if not owners:
                break
            self._check_owner(binding, [p for n, p in owners.items() if n != META_TURN])
            self._dynamodb(self._memory.store.delete_items, session_id, sorted(owners))
        else:
            if self._dynamodb(self._memory.store.item_owners, session_id):
                raise MemoryUnavailable()
        self._forget_cached(session_id)
        logger.info("session erased", extra={"session_id": session_id})
        fresh = self._sessions.rebind(binding)
        frames = [
            deleted_frame(session_id),
            session_frame(
                str(fresh.session_id),
                resumed=False,
                history=[],
                memory_mode="full",
                guest_token=fresh.guest_token,
            ),
        ]
        for frame in frames:
            self._sender.send(connection_id, frame)
        return frames

    def _forget_cached(self, session_id: str) -> None:
        cache = self._memory.cache
        if cache is None:
            return

        def forget(c: TurnCache) -> None:
            c.forget(session_id)

        try:
            self._memory.breakers.redis.call(forget, cache)
        except REDIS_FAULTS as exc:
            # Its turns are gone from DynamoDB but still cached: not erased yet, so say so.
            logger.warning("could not erase the session's cache", extra={"error": type(exc).__name__})
            raise MemoryUnavailable() from exc

    # ---- exportSession ------------------------------------------------------------------

    def export_session(self, connection_id: str) -> list[dict[str, Any]]:
        """Send every turn of the bound session, its summary and its facts as JSON over
        ``export`` frames (each under 32 KB). Someone else's session: ``Forbidden``."""
        binding = self._owned_binding(connection_id)
        session_id = str(binding.session_id)
        turns, meta = self._dynamodb(self._memory.store.session_items, session_id)
        self._check_owner(binding, (t.principal for t in turns))
        meta = meta or {}
        document = {
            "sessionId": session_id,
            "exportedAt": int(self._clock()),
            "summary": str(meta.get("summary", "")),
            "facts": [
                {"key": str(f["key"]), "value": str(f["value"]), "turn": int(f["turn"])}
                for f in meta.get("facts", [])
            ],
            "turns": [
                {
                    "turn": t.turn,
                    "user": t.user,
                    "assistant": t.assistant,
                    "status": t.status,
                    "at": t.at,
                }
                for t in turns
            ],
        }
        frames = export_frames(session_id, document)
        for frame in frames:
            self._sender.send(connection_id, frame)
        return frames

    # ---- helpers ------------------------------------------------------------------------

    def _owned_binding(self, connection_id: str) -> Binding:
        binding = self._sessions.binding(connection_id)
        if binding.session_id is None:
            raise MemoryUnavailable()
        return binding

    def _check_owner(self, binding: Binding, principals: Iterable[str | None]) -> None:
        """Every turn must have been written for this principal (a turn that records none is
        no one's to take; the meta item, which records none, is not passed here)."""
        if any(p != binding.principal for p in principals):
            logger.warning(
                "data request on another principal's session refused",
                extra={"session_id": binding.session_id},
            )
            raise Forbidden("This conversation belongs to someone else.")

    def _dynamodb(self, op: Callable[..., Any], *args: Any) -> Any:
        try:
            return self._memory.breakers.dynamodb.call(op, *args)
        except DYNAMODB_FAULTS as exc:
            logger.warning("DynamoDB unavailable for a data request", extra={"error": type(exc).__name__})
            raise MemoryUnavailable() from exc
