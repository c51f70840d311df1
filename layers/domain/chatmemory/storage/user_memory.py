"""Long-term user memory: the facts a user chose to keep, carried over to their new sessions.

Opt-in, per principal. One item in ``ChatSessions`` under ``session_id = "user#" + principal``
(``turn_number`` 0): ``long_term`` (the opt-in), ``facts`` (key, value, the session and turn
they came from, when), ``version`` (optimistic concurrency: every write is conditional on the
version it read; a new item starts at a version taken from the clock, in microseconds, so an
item erased and created again never matches a version a late writer read before the erasure),
``generation`` (that first version: a merge extracted from a memory of another generation is
not written), ``cursors`` (per session, the last turn already merged: a retried or duplicate
merge finds nothing to do), ``since`` (turns accepted before it are never merged: set by an
erasure, so that what was said before it and not merged yet stays out, and by opting in, so that
only what was said with the user's consent is collected), ``applied`` (the merges done, by
session and turn) and, for guests, ``ttl``.
Redis caches it at ``user:{<principal>}:memory``, including "not opted in", so a turn of a user
who never opted in costs one Redis GET: a versioned copy (``chatmemory.storage.cached_copy``), the
item's ``version`` compared on every put, an erasure leaving a tombstone.

Erasing everything of a principal means deleting that partition and that key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.conditions import Attr
from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from chatmemory.breakers import Breakers
from chatmemory.memory.state import Fact, FactChange, apply_fact_changes, normalize_key
from chatmemory.observability import logger
from chatmemory.storage.cached_copy import VersionedCopies, clock_version
from chatmemory.storage.keys import user_memory_key as user_key
from chatmemory.storage.keys import user_memory_partition as user_partition
from chatmemory.storage.redis_client import CacheClient
from chatmemory.turns import Turn

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table

PROFILE_TURN = 0
_APPLIED_KEPT = 100  # merged session blocks remembered; a retry comes within minutes
_CURSORS_KEPT = 100  # sessions whose long-term cursor is kept, the most recently merged
_WRITE_ATTEMPTS = 4  # optimistic writes retried when another writer got there first


def eligible(principal: str | None) -> bool:
    """Only an identified principal (a signed-in user or a guest holding its token) may keep
    memory across sessions; ``anonymous`` (no authorizer) is everyone at once."""
    return bool(principal) and str(principal).startswith(("user:", "guest:"))


def is_guest(principal: str) -> bool:
    return principal.startswith("guest:")


class UserFact(BaseModel):
    key: str
    value: str
    session_id: str = ""  # the session it was last stated in
    turn: int = 0  # up to which turn of that session it was learnt
    at: int = 0  # epoch seconds it was stored

    def as_fact(self) -> Fact:
        return Fact(key=self.key, value=self.value, turn=0)

    def frame(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "sessionId": self.session_id,
            "turn": self.turn,
            "at": self.at,
        }


class UserMemory(BaseModel):
    long_term: bool = False
    facts: list[UserFact] = Field(default_factory=list)
    version: int = 0
    applied: list[str] = Field(default_factory=list)
    cursors: dict[str, int] = Field(default_factory=dict)  # session -> last turn merged
    since: int = 0  # epoch seconds: turns accepted until then are not merged
    generation: int = 0  # the item's first version: an item erased and created again has another
    # The chat the user opted in from, and its last turn said before: those turns were said
    # without consent (cross-session retrieval never indexes them; ``since`` covers the others).
    opted_in: dict[str, int] = Field(default_factory=dict)

    def consented(self, turn: Turn) -> bool:
        """Whether a turn was said with the user's consent to keep it beyond its session."""
        return turn.at > self.since and turn.turn > self.opted_in.get(turn.session_id, 0)

    def cursor(self, session_id: str) -> int:
        return self.cursors.get(session_id, 0)

    def mergeable(self, turn: Turn) -> bool:
        """Whether a turn said in a session may still reach this memory: after its session's
        cursor, and after the last erasure or opt-in."""
        if turn.turn <= self.cursor(turn.session_id):
            return False
        return turn.at > self.since

    @property
    def active_facts(self) -> list[UserFact]:
        """What a new session gets: the facts, when the user opted in."""
        return self.facts if self.long_term else []


def merge_user_facts(
    current: list[UserFact], changes: list[FactChange], session_id: str, turn: int, at: int, limit: int
) -> list[UserFact]:
    """Apply a session's fact changes by key; past ``limit`` the oldest go first."""
    facts = apply_fact_changes(
        current,
        changes,
        lambda key, value: UserFact(key=key, value=value, session_id=session_id, turn=turn, at=at),
    )
    return sorted(facts, key=lambda f: (f.at, f.key))[-limit:]


class UserMemoryStore:
    """The profile item in DynamoDB."""

    def __init__(self, table: Table) -> None:
        self._table = table

    def get(self, principal: str, now: int) -> UserMemory:
        """The stored memory: empty when there is none, or when it expired (DynamoDB deletes
        expired items up to two days late; the version is kept for the next write)."""
        response = self._table.get_item(
            Key={"session_id": user_partition(principal), "turn_number": PROFILE_TURN},
            ConsistentRead=True,
        )
        item: dict[str, Any] | None = response.get("Item")
        if item is None:
            return UserMemory()
        version = int(item.get("version", 0))
        if "ttl" in item and int(item["ttl"]) <= now:
            return UserMemory(version=version)
        return UserMemory(
            long_term=bool(item.get("long_term", False)),
            facts=[
                UserFact(
                    key=str(f["key"]),
                    value=str(f["value"]),
                    session_id=str(f.get("session_id", "")),
                    turn=int(f.get("turn", 0)),
                    at=int(f.get("at", 0)),
                )
                for f in item.get("facts", [])
            ],
            version=version,
            applied=[str(a) for a in item.get("applied", [])],
            cursors={str(k): int(v) for k, v in item.get("cursors", {}).items()},
            since=int(item.get("since", 0)),
            generation=int(item.get("generation", 0)),
            opted_in={str(k): int(v) for k, v in item.get("opted_in", {}).items()},
        )

    def put(
        self, principal: str, memory: UserMemory, read_version: int, new_version: int, ttl: int | None
    ) -> bool:
        """Write ``memory`` at ``new_version`` if the item is still at ``read_version`` (absent
        for 0); False when another writer got there first. Only UpdateItem: other attributes may
        live on it."""
        names = {"#f": "facts", "#t": "ttl"}
        values: dict[str, Any] = {
            ":l": memory.long_term,
            ":f": [f.model_dump() for f in memory.facts],
            ":v": new_version,
            ":a": memory.applied,
            ":c": memory.cursors,
            ":s": memory.since,
            ":g": memory.generation,
            ":o": memory.opted_in,
        }
        expression = (
            "SET long_term = :l, #f = :f, version = :v, applied = :a, cursors = :c, since = :s,"
            " generation = :g, opted_in = :o"
        )
        if ttl is None:
            expression += " REMOVE #t"
        else:
            expression += ", #t = :t"
            values[":t"] = ttl
        condition = Attr("version").not_exists() if read_version == 0 else Attr("version").eq(read_version)
        try:
            self._table.update_item(
                Key={"session_id": user_partition(principal), "turn_number": PROFILE_TURN},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def delete(self, principal: str) -> None:
        self._table.delete_item(Key={"session_id": user_partition(principal), "turn_number": PROFILE_TURN})


class UserMemoryCache:
    """The profile in Redis, one versioned copy per principal (``chatmemory.storage.cached_copy``): a
    refill read before a write or an erasure can never replace what that write cached."""

    def __init__(self, client: CacheClient, ttl_seconds: int) -> None:
        self._copies = VersionedCopies(client, UserMemory, ttl_seconds)

    def get(self, principal: str) -> UserMemory | None:
        cached = self._copies.get(user_key(principal))
        if cached is None:
            return None
        return cached.value or UserMemory()  # erased: nothing kept, not opted in

    def put(self, principal: str, memory: UserMemory) -> None:
        self._copies.put(user_key(principal), memory.version, memory)

    def erase(self, principal: str) -> None:
        self._copies.put(user_key(principal), clock_version(), None)

    def forget(self, principal: str) -> None:
        self._copies.drop(user_key(principal))


class UserMemoryUnavailable(Exception):
    """The user's long-term memory could not be read or written (a store is failing)."""


@dataclass
class UserMemoryRepository:
    store: UserMemoryStore
    cache: UserMemoryCache | None
    breakers: Breakers
    max_facts: int
    guest_ttl_seconds: int  # a guest's memory outlives its last change by its token's lifetime
    clock: Callable[[], float] = time.time

    # ---- reads --------------------------------------------------------------------------

    def read(self, principal: str) -> UserMemory | None:
        """For a turn: Redis, then DynamoDB (refilling Redis); ``None`` when neither answers
        (the turn then goes on without long-term facts)."""
        if self.cache is not None:
            cached = self.breakers.redis.attempt(
                self.cache.get, principal, default=None, warn="Redis read of user memory failed"
            )
            if cached is not None:
                return cached
        try:
            memory = self.read_stored(principal)
        except UserMemoryUnavailable:
            return None
        self._cache_put(principal, memory)
        return memory

    def read_stored(self, principal: str) -> UserMemory:
        memory: UserMemory = self.breakers.dynamodb.require(
            self.store.get,
            principal,
            int(self.clock()),
            error=UserMemoryUnavailable,
            warn="DynamoDB read of user memory failed",
        )
        return memory

    # ---- writes -------------------------------------------------------------------------

    def modify(self, principal: str, change: Callable[[UserMemory], UserMemory | None]) -> UserMemory:
        """Read, change, write conditionally on the version read, and retry when another writer
        got there first. ``change`` returns ``None`` for "nothing to write". The cache is
        refreshed after DynamoDB accepted the write; raises ``UserMemoryUnavailable``."""
        dynamodb, failed = self.breakers.dynamodb, "DynamoDB write of user memory failed"
        for _ in range(_WRITE_ATTEMPTS):
            current: UserMemory = dynamodb.require(
                self.store.get, principal, int(self.clock()), error=UserMemoryUnavailable, warn=failed
            )
            updated = change(current)
            if updated is None:
                return current
            cursors = dict(list(updated.cursors.items())[-_CURSORS_KEPT:])
            updated = updated.model_copy(
                update={"applied": updated.applied[-_APPLIED_KEPT:], "cursors": cursors}
            )
            # A new item's version comes from the clock (microseconds), never 1: a writer
            # that read the item before it was erased cannot match the one created after.
            new_version = current.version + 1 if current.version else int(self.clock() * 1_000_000)
            if not current.version:
                updated = updated.model_copy(update={"generation": new_version})
            written = dynamodb.require(
                self.store.put,
                principal,
                updated,
                current.version,
                new_version,
                self._ttl(principal),
                error=UserMemoryUnavailable,
                warn=failed,
            )
            if written:
                stored = updated.model_copy(update={"version": new_version})
                self._refresh_cache(principal, stored)
                return stored
            logger.info("user memory changed concurrently; retrying")
        raise UserMemoryUnavailable()

    def merge_turns(
        self, principal: str, read: UserMemory, session_id: str, through: int, changes: list[FactChange]
    ) -> bool | None:
        """Merge the fact changes extracted from a session's turns after ``read``'s cursor up
        to ``through``, and move the cursor there. Written only if the memory is still as it
        was read (opted in, same cursor, no erasure since): ``None`` when it changed meanwhile
        (read it again and extract again), else whether something was written."""
        token = f"{session_id}#{through}"
        outcome: bool | None = False

        def change(memory: UserMemory) -> UserMemory | None:
            nonlocal outcome
            outcome = False
            if not memory.long_term or memory.cursor(session_id) >= through or token in memory.applied:
                return None
            if (memory.generation, memory.since, memory.cursor(session_id)) != (
                read.generation,
                read.since,
                read.cursor(session_id),
            ):
                outcome = None  # merged by another run, or erased meanwhile: extract again
                return None
            outcome = True
            now = int(self.clock())
            facts = merge_user_facts(memory.facts, changes, session_id, through, now, self.max_facts)
            cursors = {k: v for k, v in memory.cursors.items() if k != session_id}
            cursors[session_id] = through
            return memory.model_copy(
                update={"facts": facts, "applied": [*memory.applied, token], "cursors": cursors}
            )

        self.modify(principal, change)
        return outcome

    def opt_in(
        self, principal: str, session_id: str, through: int, facts: list[Fact], said: int = 0
    ) -> UserMemory:
        """Turn long-term memory on, keeping the facts the current session already has (up to
        turn ``through``). Turning it on from off, nothing else said before now is merged: it
        was said without consent, and may be what the user erased. In this session that is its
        turns up to ``said`` (its last); in others, the turns accepted before this second."""
        changes = [FactChange(key=f.key, value=f.value) for f in facts]

        def change(memory: UserMemory) -> UserMemory | None:
            now = int(self.clock())
            merged = merge_user_facts(memory.facts, changes, session_id, through, now, self.max_facts)
            update: dict[str, Any] = {"long_term": True, "facts": merged}
            if not memory.long_term:
                # Other chats' turns from this second on are merged (an erasure's second is
                # not: see forget_fact); this chat's from its next turn on.
                cursors = {k: v for k, v in memory.cursors.items() if k != session_id}
                cursors[session_id] = max(said, memory.cursor(session_id))
                update.update(since=now - 1, cursors=cursors, opted_in={session_id: said})
            return memory.model_copy(update=update)

        return self.modify(principal, change)

    def forget_fact(self, principal: str, key: str) -> tuple[UserMemory, bool]:
        """Erase one fact, by key; the memory after, and whether the key was there."""
        wanted = normalize_key(key)
        found = False

        def change(memory: UserMemory) -> UserMemory | None:
            nonlocal found
            kept = [f for f in memory.facts if normalize_key(f.key) != wanted]
            found = len(kept) < len(memory.facts)
            # What was said before the erasure and not merged yet stays out: a merge pending
            # now cannot bring the fact back.
            update: dict[str, Any] = {"facts": kept, "since": int(self.clock())}
            return memory.model_copy(update=update) if found else None

        memory = self.modify(principal, change)
        if not found:  # erased by an earlier attempt whose cache refresh failed: refresh it now
            self._refresh_cache(principal, memory)
        return memory, found

    def forget_all(self, principal: str) -> None:
        """Erase the user's long-term memory (facts and opt-in) from DynamoDB, then Redis.
        Raises ``UserMemoryUnavailable`` unless both are gone."""
        self.breakers.dynamodb.require(
            self.store.delete,
            principal,
            error=UserMemoryUnavailable,
            warn="DynamoDB erase of user memory failed",
        )
        if self.cache is not None:
            self.breakers.redis.require(
                self.cache.erase,
                principal,
                error=UserMemoryUnavailable,
                warn="Redis erase of user memory failed",
            )

    # ---- helpers ------------------------------------------------------------------------

    def _ttl(self, principal: str) -> int | None:
        return int(self.clock()) + self.guest_ttl_seconds if is_guest(principal) else None

    def _cache_put(self, principal: str, memory: UserMemory) -> None:
        if self.cache is None:
            return
        self.breakers.redis.succeeds(
            self.cache.put, principal, memory, warn="Redis write of user memory failed"
        )

    def _refresh_cache(self, principal: str, memory: UserMemory) -> None:
        """After a write: the new value, or at least no stale one. A Redis that accepts
        neither is an error: a forgotten fact must not be served from the cache."""
        if self.cache is None:
            return
        redis = self.breakers.redis
        if not redis.succeeds(self.cache.put, principal, memory, warn="Redis write of user memory failed"):
            redis.require(self.cache.forget, principal, error=UserMemoryUnavailable)
