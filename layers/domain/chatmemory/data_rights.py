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

from chatmemory.errors import Forbidden, MemoryUnavailable
from chatmemory.history import SessionMemory
from chatmemory.observability import logger
from chatmemory.protocol import deleted_all_frame, deleted_frame, export_frames, session_frame
from chatmemory.sender import FrameSender
from chatmemory.sessions import SessionService
from chatmemory.storage.bindings import CONNECTION_TTL_SECONDS, Binding
from chatmemory.storage.keys import META_TURN, user_memory_partition
from chatmemory.storage.turn_cache import TurnCache

# A turn being written while the session is erased may land after the first pass: erasure
# reads the partition again until it is empty, this many times at most.
_ERASE_PASSES = 3
# How long an erased session's tombstone lives: a connection bound to it lasts two hours at most.
_TOMBSTONE_SECONDS = CONNECTION_TTL_SECONDS + 3600
# Principals that are not one person's (no authorizer configured): never erased wholesale.
_SHARED_PRINCIPALS = frozenset({"anonymous", "unknown"})
# What an export says is kept besides the turns' text: derived data, erased with each turn.
KEPT_ABOUT = (
    "Besides the text, retrieval keeps for each turn listed under embeddings a compact vector of"
    " it on its item (to find it again in this chat), and for each under acrossSessions a second"
    " vector and a key derived from your identity, so that your other chats can find it (long-term"
    " memory on). Both go with the turn when it is erased; turning long-term memory off makes the"
    " second kind unsearchable at once."
)


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
        binding = self._sessions.bound(connection_id)
        session_id = str(binding.session_id)
        owners = self._dynamodb(self._memory.store.item_owners, session_id)
        self._check_owner(binding, [p for n, p in owners.items() if n != META_TURN])
        self._erase_session(binding, session_id)
        logger.info("session erased", extra={"session_id": session_id})
        return self._continue_fresh(binding, deleted_frame(session_id))

    def _erase_session(self, binding: Binding, session_id: str) -> int:
        """Erase every item of a session of this principal, then its cache entries; returns
        how many items went. A tombstone goes first, so no connection still bound to the
        session (another tab) writes a turn under its id again."""
        self._dynamodb(self._memory.meta.mark_erased, session_id, int(self._clock()) + _TOMBSTONE_SECONDS)
        erased = 0
        for _ in range(_ERASE_PASSES):
            owners = self._dynamodb(self._memory.store.item_owners, session_id)
            if not owners:
                break
            self._check_owner(binding, [p for n, p in owners.items() if n != META_TURN])
            self._dynamodb(self._memory.store.delete_items, session_id, sorted(owners))
            erased += len(owners)
        else:
            if self._dynamodb(self._memory.store.item_owners, session_id):
                raise MemoryUnavailable()
        self._forget_cached(session_id)
        return erased

    def _continue_fresh(self, binding: Binding, deleted: dict[str, Any]) -> list[dict[str, Any]]:
        fresh = self._sessions.rebind(binding)
        frames = [
            deleted,
            session_frame(
                str(fresh.session_id),
                resumed=False,
                history=[],
                memory_mode="full",
                guest_token=fresh.guest_token,
            ),
        ]
        for frame in frames:
            self._sender.send(binding.connection_id, frame)
        return frames

    # ---- deleteMyData -------------------------------------------------------------------

    def delete_my_data(self, connection_id: str) -> list[dict[str, Any]]:
        """The right to erasure: every session of the connection's principal (each as
        ``deleteSession`` erases one) and the principal's long-term memory (its partition in
        DynamoDB and its Redis key), then ``deleted`` (scope ``principal``, with counts) and
        the ``session`` frame of the fresh session the connection continues in.

        Sessions are found through the principal index, plus the connection's own session
        (the index lags its table by a moment); the index is read again until it names no
        session not erased yet, since another tab may be writing a first turn meanwhile. A
        store failing midway: ``MemoryUnavailable`` (send it again; what is erased stays so)."""
        binding = self._sessions.bound(connection_id)
        if binding.principal in _SHARED_PRINCIPALS:
            raise Forbidden(
                "Erasing all your data needs you to be signed in (or a guest with a token): "
                "this connection has no identity of its own."
            )
        seen: set[str] = set()
        sessions = items = 0
        pending = {str(binding.session_id)}
        for _ in range(_ERASE_PASSES):
            pending |= self._dynamodb(self._memory.store.principal_sessions, binding.principal)
            pending -= seen | {user_memory_partition(binding.principal)}  # erased below
            if not pending:
                break
            for session_id in sorted(pending):
                seen.add(session_id)
                owners = self._dynamodb(self._memory.store.item_owners, session_id)
                if any(p != binding.principal for n, p in owners.items() if n != META_TURN):
                    # Not this principal's (a binding pointing elsewhere): left untouched.
                    logger.warning(
                        "erasure skipped another principal's session", extra={"session_id": session_id}
                    )
                    continue
                erased = self._erase_session(binding, session_id)
                sessions += 1 if erased else 0
                items += erased
            pending = set()
        items += self._erase_user_memory(binding.principal)
        logger.info("all data of a principal erased", extra={"sessions": sessions, "items": items})
        return self._continue_fresh(
            binding, deleted_all_frame(str(binding.session_id), sessions=sessions, items=items)
        )

    def _erase_user_memory(self, principal: str) -> int:
        partition = user_memory_partition(principal)
        owners = self._dynamodb(self._memory.store.item_owners, partition)
        if owners:
            self._dynamodb(self._memory.store.delete_items, partition, sorted(owners))
        cache = self._memory.cache
        if cache is not None:

            def forget(c: TurnCache) -> None:
                c.forget_user(principal)

            self._memory.breakers.redis.require(
                forget, cache, warn="could not erase the user's cached memory"
            )
        return len(owners)

    def _forget_cached(self, session_id: str) -> None:
        cache = self._memory.cache
        if cache is None:
            return

        def forget(c: TurnCache) -> None:
            c.forget(session_id)

        # Its turns are gone from DynamoDB but still cached: not erased yet, so say so.
        self._memory.breakers.redis.require(forget, cache, warn="could not erase the session's cache")

    # ---- exportSession ------------------------------------------------------------------

    def export_session(self, connection_id: str) -> list[dict[str, Any]]:
        """Send every turn of the bound session, its summary and its facts as JSON over
        ``export`` frames (each under 32 KB). Someone else's session: ``Forbidden``."""
        binding = self._sessions.bound(connection_id)
        session_id = str(binding.session_id)
        turns, meta = self._dynamodb(self._memory.store.session_items, session_id)
        self._check_owner(binding, (t.principal for t in turns))
        meta = meta or {}
        embedded, across = self._dynamodb(self._memory.store.derived, session_id)
        document = {
            "sessionId": session_id,
            "exportedAt": int(self._clock()),
            "title": str(meta["title"]) if meta.get("title") else None,
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
            "kept": {
                "about": KEPT_ABOUT,
                "embeddings": embedded,
                "acrossSessions": across,
            },
        }
        frames = export_frames(session_id, document)
        for frame in frames:
            self._sender.send(connection_id, frame)
        return frames

    # ---- helpers ------------------------------------------------------------------------

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
        return self._memory.breakers.dynamodb.require(
            op, *args, warn="DynamoDB unavailable for a data request"
        )
