"""Redis write-through cache of each session's recent turns.

One list per session, oldest turn first, under a hash-tagged key so every command of a turn
lands on one cluster slot (ElastiCache Serverless runs in cluster mode). Entries are finished
turns only. A list whose turn numbers are not consecutive is never served: it is dropped and
the caller falls back to DynamoDB.

A session's memory state (summary, facts, cursor, strategy) is one string beside the list,
under the same hash tag, a versioned copy (``chatmemory.storage.cached_copy``) of its meta item.
"""

from __future__ import annotations

from pydantic import ValidationError

from chatmemory.storage.cached_copy import clock_version, refill_unless_erased, tombstone
from chatmemory.storage.keys import corpus_key, ended_key, state_key, stop_key, turns_key, user_memory_key
from chatmemory.storage.redis_client import CacheClient
from chatmemory.turns import Turn, is_contiguous


class TurnCache:
    def __init__(self, client: CacheClient, window: int, ttl_seconds: int) -> None:
        self._redis = client
        self._window = window
        self._ttl = ttl_seconds

    def window(self, session_id: str, now: int) -> list[Turn] | None:
        """The cached window, or ``None`` on a miss (absent, or unfit to serve)."""
        raw = self._redis.lrange(turns_key(session_id), 0, -1)
        if not raw:
            return None
        try:
            turns = [Turn.model_validate_json(entry) for entry in raw]
        except ValidationError:  # another shape (another release) or garbage: a miss
            self.invalidate(session_id)
            return None
        if not is_contiguous(turns):
            self.invalidate(session_id)
            return None
        return [t for t in turns if t.expires_at > now]

    def fill(self, session_id: str, turns: list[Turn]) -> None:
        """Replace the cached window with ``turns`` (read from DynamoDB), unless the session was
        erased since (``cached_copy.refill_unless_erased``)."""
        entries: list[str | bytes] = [t.model_dump_json() for t in turns[-self._window :]]
        refill_unless_erased(self._redis, turns_key(session_id), state_key(session_id), entries, self._ttl)

    def append(self, session_id: str, turn: Turn, first_turn: bool) -> None:
        """Write one finished turn through, in one MULTI/EXEC on one slot.

        Only a session's first turn may create the list; otherwise an absent list stays absent
        (a later read fills it from DynamoDB) rather than becoming a window with one turn.
        """
        key = turns_key(session_id)
        with self._redis.pipeline(transaction=True) as pipe:
            if first_turn:
                pipe.rpush(key, turn.model_dump_json())
            else:
                pipe.rpushx(key, turn.model_dump_json())
            pipe.ltrim(key, -self._window, -1)
            pipe.expire(key, self._ttl)
            pipe.execute()

    def invalidate(self, session_id: str) -> None:
        self._redis.delete(turns_key(session_id))

    def mark_ended(self, session_id: str, turn: int, ttl_seconds: int) -> None:
        self._redis.set(ended_key(session_id), turn, ex=ttl_seconds)

    def ended(self, session_id: str) -> int:
        raw = self._redis.get(ended_key(session_id))
        return int(raw) if raw else 0

    def request_stop(self, session_id: str, at_ms: int, ttl_seconds: int) -> None:
        self._redis.set(stop_key(session_id), at_ms, ex=ttl_seconds)

    def stop_requested_at(self, session_id: str) -> int:
        raw = self._redis.get(stop_key(session_id))
        return int(raw) if raw else 0

    def forget(self, session_id: str) -> None:
        """Drop everything cached for the session (its turns, its retrieval corpus with the
        turns' vectors) and leave a tombstone for its memory state (``chatmemory.storage.cached_copy``:
        a refill read before the erasure cannot bring it back): one MULTI, one slot."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(
                turns_key(session_id), corpus_key(session_id), ended_key(session_id), stop_key(session_id)
            )
            pipe.set(state_key(session_id), tombstone(clock_version()), ex=self._ttl)
            pipe.execute()

    def forget_user(self, principal: str) -> None:
        """Leave a tombstone for the principal's cached long-term memory."""
        self._redis.set(user_memory_key(principal), tombstone(clock_version()), ex=self._ttl)
