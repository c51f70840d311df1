"""The rule for a cached copy of one DynamoDB item: versioned values, compared on write.

Every write of the item in DynamoDB raises its ``version``; Redis holds ``<version>|<json>``,
a copy of the item at that version. Whoever puts a copy (a writer after DynamoDB accepted its
write, a reader refilling after a miss) passes the version it got from DynamoDB, and one Lua
script replaces the cached copy only with a higher version. So a refill that read the item
before a later write can never overwrite that write's copy: a stale refill is impossible, not
just unlikely. An erased item leaves a tombstone, ``<version>|`` with the erasure's version
(taken from the clock, in microseconds, like the first version of a new item), which a refill
read before the erasure cannot replace either.

A cached value that does not parse (another shape, another release) is a miss, and is dropped.

A session's lists (its window of turns, its search corpus) are refilled whole from DynamoDB after
a miss; an erasure deletes them and leaves its tombstone on the session's memory state, and
``refill_unless_erased`` checks that tombstone in the same script as the refill: a reader that
read the turns before the erasure cannot put them back after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from chatmemory.storage.redis_client import CacheClient

M = TypeVar("M", bound=BaseModel)

# KEYS[1]: the key; ARGV: version, encoded copy, seconds to live. 1 if written, 0 if the cached
# copy is as new or newer. Lua numbers are doubles: versions stay below 2^53 (microseconds).
_PUT_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local stored = tonumber(string.match(current, '^(%d+)|'))
  if stored and stored >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


# KEYS[1]: the list; KEYS[2]: the session's memory-state copy. ARGV[1]: seconds to live;
# ARGV[2..]: the entries. 0 (nothing written) if the session was erased: its state a tombstone.
_REFILL_UNLESS_ERASED = """
local state = redis.call('GET', KEYS[2])
if state and string.sub(state, -1) == '|' then return 0 end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if #ARGV > 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return 1
"""


def refill_unless_erased(
    client: CacheClient, list_key: str, state_key: str, entries: list[str | bytes], ttl_seconds: int
) -> bool:
    """Replace a session's cached list with ``entries`` unless the session was erased (one
    script, one slot: both keys carry the session's hash tag). False if it was."""
    # RedisCluster runs EVAL on the keys' slot; its type stubs do not declare it.
    written = client.eval(_REFILL_UNLESS_ERASED, 2, list_key, state_key, ttl_seconds, *entries)  # type: ignore[union-attr]
    return bool(written)


def clock_version() -> int:
    """A version from the clock, in microseconds: an erasure's, or a new item's first."""
    return time.time_ns() // 1_000


def tombstone(version: int) -> bytes:
    """The copy of an item known absent since ``version``."""
    return f"{version}|".encode()


@dataclass(frozen=True)
class Copy(Generic[M]):
    """A cached copy: the item at ``version``, or ``None`` when the item is known absent."""

    version: int
    value: M | None


class VersionedCopies(Generic[M]):
    """Copies of one kind of item (``model``) under keys the caller names."""

    def __init__(self, client: CacheClient, model: type[M], ttl_seconds: int) -> None:
        self._redis, self._model, self._ttl = client, model, ttl_seconds

    def get(self, key: str) -> Copy[M] | None:
        """The cached copy, or ``None`` on a miss (absent or unparsable)."""
        raw = self._redis.get(key)
        if not raw:
            return None
        version, _, payload = raw.partition(b"|")
        try:
            return Copy(int(version), self._model.model_validate_json(payload) if payload else None)
        except (ValueError, ValidationError):
            self._redis.delete(key)
            return None

    def put(self, key: str, version: int, value: M | None) -> bool:
        """Cache the item at ``version`` (``None``: known absent) unless a copy as new is there."""
        encoded = tombstone(version) + (value.model_dump_json().encode() if value is not None else b"")
        # RedisCluster runs EVAL on the key's slot; its type stubs do not declare it.
        written = self._redis.eval(_PUT_IF_NEWER, 1, key, version, encoded, self._ttl)  # type: ignore[union-attr]
        return bool(written)

    def drop(self, key: str) -> None:
        self._redis.delete(key)
