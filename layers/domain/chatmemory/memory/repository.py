"""A session's memory state through its breakers: Redis first, DynamoDB's meta item behind it.

Reads never fail a turn: when neither store answers, the turn goes on with no summary and no
facts (and says so, since its turns then reach back less far than the strategy wants).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chatmemory.breakers import Breakers
from chatmemory.cache import TurnCache
from chatmemory.config import StrategyName
from chatmemory.history import DYNAMODB_FAULTS, REDIS_FAULTS
from chatmemory.memory.state import MemoryState
from chatmemory.observability import logger
from chatmemory.store import TurnStore


@dataclass
class MemoryStateRepository:
    store: TurnStore
    cache: TurnCache | None
    breakers: Breakers
    expiry: Callable[[], int]  # the session's expiry, from now

    def get(self, session_id: str) -> MemoryState | None:
        """The state, or ``None`` when it cannot be read."""
        if self.cache is not None:
            try:
                cached = self.breakers.redis.call(self.cache.state, session_id)
                if cached is not None:
                    return cached
            except REDIS_FAULTS as exc:
                logger.warning("Redis read of memory state failed", extra={"error": type(exc).__name__})
        stored = self.read_stored(session_id)
        if stored is not None:
            self._cache(lambda c: c.put_state(session_id, stored))
        return stored

    def read_stored(self, session_id: str) -> MemoryState | None:
        try:
            return self.breakers.dynamodb.call(self.store.memory_state, session_id)
        except DYNAMODB_FAULTS as exc:
            logger.warning("DynamoDB read of memory state failed", extra={"error": type(exc).__name__})
            return None

    def advance(self, session_id: str, state: MemoryState) -> bool:
        """Store a newer summary and facts; False if stored ones already reach as far. Faults
        propagate: the update is then retried after a later turn."""
        written = self.breakers.dynamodb.call(self.store.advance_memory, session_id, state, self.expiry())
        if written:
            self._cache(lambda c: c.put_state(session_id, state))
        return bool(written)

    def set_strategy(self, session_id: str, strategy: StrategyName) -> None:
        """The session's own strategy, from its next turn on."""
        self.breakers.dynamodb.call(self.store.set_strategy, session_id, strategy, self.expiry())
        self._cache(lambda c: c.invalidate_state(session_id))

    def _cache(self, op: Callable[[TurnCache], object]) -> None:
        if self.cache is None:
            return
        try:
            self.breakers.redis.call(op, self.cache)
        except REDIS_FAULTS as exc:
            # A stale state is still coherent (an older summary with the turns after it); it
            # expires with the cache entry.
            logger.warning("Redis write of memory state failed", extra={"error": type(exc).__name__})
