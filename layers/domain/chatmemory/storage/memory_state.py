"""A session's memory state through its breakers: Redis first, DynamoDB's meta item behind it.

Reads never fail a turn: when neither store answers, the turn goes on with no summary and no
facts (and says so, since its turns then reach back less far than the strategy wants).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chatmemory.breakers import Breakers
from chatmemory.config import StrategyName
from chatmemory.memory.state import MemoryState
from chatmemory.storage.cached_copy import VersionedCopies
from chatmemory.storage.keys import state_key
from chatmemory.storage.session_meta import SessionMetaStore


@dataclass
class MemoryStateRepository:
    """The cached copy follows ``chatmemory.storage.cached_copy``: every copy put carries the version
    DynamoDB returned, so a refill read before a write, or an update that read the state before
    a ``setMemory``, can never put back an older state."""

    store: SessionMetaStore
    cache: VersionedCopies[MemoryState] | None
    breakers: Breakers
    expiry: Callable[[], int]  # the session's expiry, from now

    def get(self, session_id: str) -> MemoryState | None:
        """The state, or ``None`` when it cannot be read."""
        if self.cache is not None:
            cached = self.breakers.redis.attempt(
                self.cache.get, state_key(session_id), default=None, warn="Redis read of memory state failed"
            )
            if cached is not None:
                return cached.value or MemoryState()  # ``None``: the session was erased
        stored = self.read_stored(session_id)
        if stored is not None:
            self._cache(session_id, stored)
        return stored

    def read_stored(self, session_id: str) -> MemoryState | None:
        return self.breakers.dynamodb.attempt(
            self.store.memory_state, session_id, default=None, warn="DynamoDB read of memory state failed"
        )

    def advance(self, session_id: str, state: MemoryState) -> bool:
        """Store a newer summary and facts; False if stored ones already reach as far. Faults
        propagate: the update is then retried after a later turn. The copy cached is the item
        read back (a transaction returns no values), so what another writer changed meanwhile,
        the strategy say, is cached as DynamoDB has it."""
        written = self.breakers.dynamodb.call(self.store.advance_memory, session_id, state, self.expiry())
        if written:
            self._recache(session_id)
        return bool(written)

    def note_update_failure(self, session_id: str, through: int, failures: int, retry_at: int) -> None:
        """Note a failed summary update and when it may be tried again, and cache the state as
        stored. Faults propagate; an erased or already updated session is left alone."""
        if self.breakers.dynamodb.call(
            self.store.record_update_failure, session_id, through, failures, retry_at, self.expiry()
        ):
            self._recache(session_id)

    def note_turns_expiry(self, session_id: str, oldest_turn: int, turns_expire_at: int) -> None:
        """Note when the session's turns start to expire, and cache the state as stored. Faults
        propagate; an erased session is left alone."""
        if self.breakers.dynamodb.call(
            self.store.record_turns_expiry, session_id, oldest_turn, turns_expire_at
        ):
            self._recache(session_id)

    def set_strategy(self, session_id: str, strategy: StrategyName) -> None:
        """The session's own strategy, from its next turn on; ``MemoryUnavailable`` when it
        cannot be stored."""
        stored = self.breakers.dynamodb.require(self.store.set_strategy, session_id, strategy, self.expiry())
        self._cache(session_id, stored)

    def _recache(self, session_id: str) -> None:
        """After a write whose transaction returns no values: cache the item as stored."""
        stored = self.read_stored(session_id)
        if stored is not None:
            self._cache(session_id, stored)
        else:
            self._drop(session_id)

    def _cache(self, session_id: str, state: MemoryState) -> None:
        cache = self.cache
        if cache is None:
            return
        # On a fault the copy left is an older one, still coherent (an older summary with the
        # turns after it); a newer write or the cache entry's expiry replaces it.
        self.breakers.redis.succeeds(
            cache.put, state_key(session_id), state.version, state, warn="Redis write of memory state failed"
        )

    def _drop(self, session_id: str) -> None:
        if self.cache is None:
            return
        self.breakers.redis.succeeds(
            self.cache.drop, state_key(session_id), warn="Redis write of memory state failed"
        )
