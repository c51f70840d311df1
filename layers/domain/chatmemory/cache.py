"""Redis write-through cache of each session's recent turns: the only module that speaks Redis.

One list per session, oldest turn first, under a hash-tagged key so every command of a turn
lands on one cluster slot (ElastiCache Serverless runs in cluster mode). Entries are finished
turns only. A list whose turn numbers are not consecutive is never served: it is dropped and
the caller falls back to DynamoDB.

A session's memory state (summary, facts, cursor, strategy) is one string beside the list,
under the same hash tag, a versioned copy (``chatmemory.cached_copy``) of its meta item.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import ValidationError
from redis.credentials import CredentialProvider
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from chatmemory.cached_copy import clock_version, tombstone
from chatmemory.turns import Turn, is_contiguous

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster

# A standalone Redis, or a cluster (ElastiCache Serverless): every command used here takes
# keys of one hash tag, so both run them alike, MULTI/EXEC included (redis-py >= 6.1).
CacheClient: TypeAlias = "Redis[bytes] | RedisCluster[bytes]"


def turns_key(session_id: str) -> str:
    return f"chat:{{{session_id}}}:turns"


def state_key(session_id: str) -> str:
    return f"chat:{{{session_id}}}:memory"


def corpus_key(session_id: str) -> str:
    """Every turn of the session as retrieval searches it (``chatmemory.memory.corpus``)."""
    return f"chat:{{{session_id}}}:corpus"


def ended_key(session_id: str) -> str:
    """The number of the session's last turn that ended without its reply stored (a number,
    no text): not "being answered", though DynamoDB still says pending."""
    return f"chat:{{{session_id}}}:ended"


def user_memory_key(principal: str) -> str:
    """A principal's long-term memory (across sessions)."""
    return f"user:{{{principal}}}:memory"


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

    def mark_ended(self, session_id: str, turn: int, ttl_seconds: int) -> None:
        self._redis.set(ended_key(session_id), turn, ex=ttl_seconds)

    def ended(self, session_id: str) -> int:
        raw = self._redis.get(ended_key(session_id))
        return int(raw) if raw else 0

    def forget(self, session_id: str) -> None:
        """Drop everything cached for the session (its turns, its retrieval corpus with the
        turns' vectors) and leave a tombstone for its memory state (``chatmemory.cached_copy``:
        a refill read before the erasure cannot bring it back): one MULTI, one slot."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(turns_key(session_id), corpus_key(session_id), ended_key(session_id))
            pipe.set(state_key(session_id), tombstone(clock_version()), ex=self._ttl)
            pipe.execute()

    def forget_user(self, principal: str) -> None:
        """Leave a tombstone for the principal's cached long-term memory."""
        self._redis.set(user_memory_key(principal), tombstone(clock_version()), ex=self._ttl)


class SecretCredentials(CredentialProvider):
    """The cache user's password from Secrets Manager, asked for when a connection opens
    (Powertools caches it, so a rotated password is picked up within ``max_age``)."""

    def __init__(self, username: str | None, secret_name: str, max_age: int = 300) -> None:
        self._username, self._secret_name, self._max_age = username, secret_name, max_age

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        from aws_lambda_powertools.utilities import parameters

        password = str(parameters.get_secret(self._secret_name, max_age=self._max_age))
        return (self._username, password) if self._username else (password,)


class LazyCluster:
    """A ``RedisCluster`` built on first use.

    ``RedisCluster`` reads the slot map when it is constructed, so building it at cold start
    would make an unreachable cache fail the function's initialisation. Built here, inside
    the first breaker-guarded call, the failure is one more Redis fault (a
    ``redis.ConnectionError``) and the turn falls back to DynamoDB; the next call tries again.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self._url, self._options = url, options
        self._client: RedisCluster[bytes] | None = None
        self._lock = threading.Lock()

    def client(self) -> RedisCluster[bytes]:
        with self._lock:
            if self._client is None:
                from redis.cluster import RedisCluster

                try:
                    self._client = RedisCluster.from_url(self._url, **self._options)
                except RedisClusterException as exc:
                    raise RedisConnectionError(f"cache cluster unreachable: {exc}") from exc
            return self._client

    def disconnect(self) -> None:
        """Close the nodes' connections, if the cluster was built (never builds it)."""
        with self._lock:
            if self._client is not None:
                self._client.disconnect_connection_pools()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)
