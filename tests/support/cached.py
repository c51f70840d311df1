"""What an erasure leaves in Redis: nothing that holds data. A versioned copy's tombstone
(``chatmemory.storage.cached_copy``: a version number, no content) is not data."""

from __future__ import annotations

import re

import redis

_TOMBSTONE = re.compile(rb"\d+\|")


def is_tombstone(client: redis.Redis, key: bytes | str) -> bool:
    if client.type(key) != b"string":
        return False
    return bool(_TOMBSTONE.fullmatch(client.get(key) or b""))


def keys_with_data(client: redis.Redis, pattern: str) -> list[bytes]:
    """The keys matching ``pattern`` that hold anything but a tombstone."""
    return [key for key in client.keys(pattern) if not is_tombstone(client, key)]


def holds_no_data(client: redis.Redis, key: str) -> bool:
    return not client.exists(key) or is_tombstone(client, key)
