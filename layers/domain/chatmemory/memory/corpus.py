"""A session's retrieval corpus: every answered turn with its embedding, the one place that
reads and writes it. Durable on the DynamoDB turn items (``vec``), hot in one Redis list per
session so a turn's search is one LRANGE, not a read of the whole partition.

The rule of the cached copy: the list is rebuilt whole from DynamoDB when it is absent, and
only ever appended to when present (RPUSHX), so it is never a partial corpus that looks whole.
A turn appears again when it gains its vector; the newest entry for a turn wins.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from chatmemory.breakers import Breakers
from chatmemory.cache import CacheClient, corpus_key
from chatmemory.history import DYNAMODB_FAULTS, REDIS_FAULTS
from chatmemory.observability import logger
from chatmemory.store import TurnStore
from chatmemory.turns import Turn


@dataclass(frozen=True)
class Passage:
    """One earlier turn as retrieval sees it."""

    turn: Turn
    vector: bytes | None  # ``embeddings.pack``ed; ``None`` until the memory worker embedded it

    def to_json(self) -> str:
        vector = base64.b64encode(self.vector).decode() if self.vector is not None else None
        return json.dumps({"turn": self.turn.model_dump(mode="json"), "vec": vector})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Passage:
        data = json.loads(raw)
        vector = base64.b64decode(data["vec"]) if data.get("vec") else None
        return cls(Turn.model_validate(data["turn"]), vector)


class CorpusUnavailable(Exception):
    """Neither Redis nor DynamoDB could give the corpus."""


class CorpusRepository:
    def __init__(
        self,
        store: TurnStore,
        redis: CacheClient | None,
        breakers: Breakers,
        ttl_seconds: int,
        clock: Callable[[], float],
    ) -> None:
        self._store, self._redis, self._breakers = store, redis, breakers
        self._ttl, self._clock = ttl_seconds, clock

    def read(self, session_id: str) -> list[Passage]:
        """The session's searchable turns, oldest first; ``CorpusUnavailable`` if unreachable."""
        now = int(self._clock())
        cached = self._cached(session_id)
        if cached is not None:
            return [p for p in cached if p.turn.expires_at > now]
        try:
            stored = self._breakers.dynamodb.call(self._store.searchable_turns, session_id, now)
        except DYNAMODB_FAULTS as exc:
            raise CorpusUnavailable() from exc
        passages = [Passage(turn, vector) for turn, vector in stored]
        self._fill(session_id, passages)
        return passages

    def add(self, session_id: str, passages: list[Passage]) -> None:
        """Keep newly embedded turns: their vectors on their items, then appended to the cached
        list if there is one. A DynamoDB fault raises (the worker retries after a later turn)."""
        for passage in passages:
            if passage.vector is not None:
                self._breakers.dynamodb.call(
                    self._store.put_vector, session_id, passage.turn.turn, passage.vector
                )
        if self._redis is None or not passages:
            return
        key = corpus_key(session_id)
        try:

            def append() -> None:
                assert self._redis is not None
                with self._redis.pipeline(transaction=True) as pipe:
                    pipe.rpushx(key, *(p.to_json() for p in passages))
                    pipe.expire(key, self._ttl, xx=True)
                    pipe.execute()

            self._breakers.redis.call(append)
        except REDIS_FAULTS:
            self._drop(session_id)  # may have missed this write: rebuilt from DynamoDB next time

    def _cached(self, session_id: str) -> list[Passage] | None:
        if self._redis is None:
            return None
        redis = self._redis
        try:
            raw = self._breakers.redis.call(redis.lrange, corpus_key(session_id), 0, -1)
        except REDIS_FAULTS:
            return None
        if not raw:
            return None
        try:
            entries = [Passage.from_json(entry) for entry in raw]
        except (ValueError, KeyError, TypeError):
            logger.warning("retrieval corpus entry does not parse; rebuilt from DynamoDB")
            self._drop(session_id)
            return None
        newest: dict[int, Passage] = {}
        for entry in entries:  # a turn listed again once embedded: the later entry wins
            newest[entry.turn.turn] = entry
        return [newest[number] for number in sorted(newest)]

    def _fill(self, session_id: str, passages: list[Passage]) -> None:
        if self._redis is None:
            return
        key = corpus_key(session_id)
        redis = self._redis

        def fill() -> None:
            with redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                # An empty session gets a marker-free empty list: absent, and read again next time.
                if passages:
                    pipe.rpush(key, *(p.to_json() for p in passages))
                    pipe.expire(key, self._ttl)
                pipe.execute()

        with contextlib.suppress(*REDIS_FAULTS):  # served from DynamoDB this time
            self._breakers.redis.call(fill)

    def _drop(self, session_id: str) -> None:
        if self._redis is None:
            return
        try:
            self._breakers.redis.call(self._redis.delete, corpus_key(session_id))
        except REDIS_FAULTS:
            logger.warning("retrieval corpus could not be dropped after a failed write")
