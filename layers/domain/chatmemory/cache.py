"""Redis write-through cache of each session's recent turns: the only module that speaks Redis.

One list per session, oldest turn first, under a hash-tagged key so every command of a turn
lands on one cluster slot (ElastiCache Serverless runs in cluster mode). Entries are finished
turns only. A list whose turn numbers are not consecutive is never served: it is dropped and
the caller falls back to DynamoDB.

A session's memory state (summary, facts, cursor, strategy) is one string beside the list,
under the same hash tag, written through after DynamoDB accepted it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatmemory.memory.state import MemoryState
from chatmemory.turns import Turn, is_contiguous

if TYPE_CHECKING:
    from redis import Redis


def turns_key(session_id: str) -> str:
    return f"chat:{{{session_id}}}:turns"


def state_key(session_id: str) -> str:
    return f"chat:{{{session_id}}}:memory"


def user_memory_key(principal: str) -> str:
    """A principal's long-term memory (across sessions)."""
    return f"user:{{{principal}}}:memory"


class TurnCache:
    def __init__(self, client: Redis[bytes], window: int, ttl_seconds: int) -> None:
        self._redis = client
        self._window = window
        self._ttl = ttl_seconds

    def window(self, session_id: str, now: int) -> list[Turn] | None:
        """The cached window, or ``None`` on a miss (absent, or unfit to serve)."""
        raw = self._redis.lrange(turns_key(session_id), 0, -1)
        if not raw:
            return None
        turns = [Turn.model_validate_json(entry) for entry in raw]
        if not is_contiguous(turns):
            self.invalidate(session_id)
            return None
        return [t for t in turns if t.expires_at > now]

    def fill(self, session_id: str, turns: list[Turn]) -> None:
        """Replace the cached window with ``turns`` (read from DynamoDB)."""
        key = turns_key(session_id)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if turns:
                pipe.rpush(key, *(t.model_dump_json() for t in turns[-self._window :]))
                pipe.expire(key, self._ttl)
            pipe.execute()

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

    def state(self, session_id: str) -> MemoryState | None:
        raw = self._redis.get(state_key(session_id))
        return MemoryState.model_validate_json(raw) if raw else None

    def put_state(self, session_id: str, state: MemoryState) -> None:
        self._redis.set(state_key(session_id), state.model_dump_json(), ex=self._ttl)

    def invalidate_state(self, session_id: str) -> None:
        self._redis.delete(state_key(session_id))

    def forget(self, session_id: str) -> None:
        """Drop everything cached for the session (its turns and its memory state): one
        command, one slot."""
        self._redis.delete(turns_key(session_id), state_key(session_id))

    def forget_user(self, principal: str) -> None:
        """Drop the principal's cached long-term memory."""
        self._redis.delete(user_memory_key(principal))
