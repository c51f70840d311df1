"""A session's retrieval corpus: every answered turn with its embedding, the one place that
reads and writes it. Durable on the DynamoDB turn items (``vec``), hot in one Redis list per
session so a turn's search is one round trip, not a read of the whole partition.

The rule of the cached copy: the list is rebuilt whole from DynamoDB when it is absent, and
only ever appended to when present (RPUSHX), so it is never a partial corpus that looks whole.
A turn appears again when it gains its vector; the newest entry for a turn wins.

The list opens with a header naming its generation (new at every rebuild). Entries are only
appended within a generation, so a reader that has seen the first N entries of a generation
reads only what came after them (``read_since``): a warm process's search reads the turns
added since its last one, not the whole corpus, at any session length.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from chatmemory.breakers import Breakers
from chatmemory.observability import logger
from chatmemory.storage.cached_copy import refill_unless_erased
from chatmemory.storage.keys import corpus_key, state_key
from chatmemory.storage.redis_client import CacheClient
from chatmemory.storage.turns import TurnStore
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


@dataclass(frozen=True)
class CorpusCursor:
    """How much of one generation of the cached list a reader has seen."""

    generation: str
    entries: int  # list entries read, the header included


@dataclass(frozen=True)
class CorpusRead:
    """What ``read_since`` found: the whole corpus, or the entries appended after the cursor
    (in list order, re-listed turns included: the later entry for a turn wins)."""

    passages: list[Passage]
    whole: bool
    cursor: CorpusCursor | None  # ``None``: not served from Redis, so nothing to resume from


def _header(generation: str) -> str:
    return json.dumps({"generation": generation})


def _generation(raw: bytes | str | None) -> str | None:
    """The generation a list's first entry names, ``None`` if it is not a header."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    generation = data.get("generation") if isinstance(data, dict) else None
    return generation if isinstance(generation, str) else None


def newest_per_turn(passages: list[Passage], now: int) -> list[Passage]:
    """One passage per unexpired turn, the latest listed, in turn order."""
    newest: dict[int, Passage] = {}
    for passage in passages:
        newest[passage.turn.turn] = passage
    return [newest[n] for n in sorted(newest) if newest[n].turn.expires_at > now]


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

    def now(self) -> int:
        """The time expiry is judged by."""
        return int(self._clock())

    def read(self, session_id: str) -> list[Passage]:
        """The session's searchable turns, oldest first; ``CorpusUnavailable`` if unreachable."""
        return newest_per_turn(self.read_since(session_id, None).passages, int(self._clock()))

    def read_since(self, session_id: str, cursor: CorpusCursor | None) -> CorpusRead:
        """The entries appended since ``cursor`` when the cached list is still that generation
        (one round trip), else the whole corpus: the cached list, or DynamoDB (which refills
        it). ``CorpusUnavailable`` if neither answers. Expired turns are the reader's to drop."""
        if cursor is not None:
            appended = self._cached_since(session_id, cursor)
            if appended is not None:
                return appended
        cached = self._cached(session_id)
        if cached is not None:
            return cached
        now = int(self._clock())
        stored = self._breakers.dynamodb.require(
            self._store.searchable_turns, session_id, now, error=CorpusUnavailable
        )
        passages = [Passage(turn, vector) for turn, vector in stored]
        return CorpusRead(passages, whole=True, cursor=self._fill(session_id, passages))

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
        key, redis = corpus_key(session_id), self._redis

        def append() -> None:
            with redis.pipeline(transaction=True) as pipe:
                pipe.rpushx(key, *(p.to_json() for p in passages))
                pipe.expire(key, self._ttl, xx=True)
                pipe.execute()

        if not self._breakers.redis.succeeds(append):
            self._drop(session_id)  # may have missed this write: rebuilt from DynamoDB next time

    def _cached_since(self, session_id: str, cursor: CorpusCursor) -> CorpusRead | None:
        """The entries after ``cursor``, if the list is still its generation and not shorter."""
        if self._redis is None:
            return None
        key, redis = corpus_key(session_id), self._redis

        def tail() -> tuple[bytes | None, int, list[bytes]]:
            with redis.pipeline(transaction=True) as pipe:  # one consistent view, one round trip
                pipe.lindex(key, 0)
                pipe.llen(key)
                pipe.lrange(key, cursor.entries, -1)
                header, length, entries = pipe.execute()
            return header, int(length), entries

        read = self._breakers.redis.attempt(tail, default=None)
        if read is None:
            return None
        header, length, raw = read
        if _generation(header) != cursor.generation or length < cursor.entries:
            return None  # rebuilt, erased or expired since: read whole
        passages = self._parse(session_id, raw)
        if passages is None:
            return None
        return CorpusRead(passages, whole=False, cursor=CorpusCursor(cursor.generation, length))

    def _cached(self, session_id: str) -> CorpusRead | None:
        if self._redis is None:
            return None
        redis = self._redis
        # Deferred: a cluster client is built, and can fail, on its first attribute access.
        raw = self._breakers.redis.attempt(lambda: redis.lrange(corpus_key(session_id), 0, -1), default=None)
        if not raw:
            return None
        generation = _generation(raw[0])
        passages = self._parse(session_id, raw[1:]) if generation is not None else None
        if generation is None or passages is None:
            logger.warning("retrieval corpus does not parse; rebuilt from DynamoDB")
            self._drop(session_id)
            return None
        return CorpusRead(passages, whole=True, cursor=CorpusCursor(generation, len(raw)))

    def _parse(self, session_id: str, raw: list[bytes]) -> list[Passage] | None:
        try:
            return [Passage.from_json(entry) for entry in raw]
        except (ValueError, KeyError, TypeError):
            logger.warning("retrieval corpus entry does not parse; rebuilt from DynamoDB")
            self._drop(session_id)
            return None

    def _fill(self, session_id: str, passages: list[Passage]) -> CorpusCursor | None:
        """Cache the corpus as a new generation (an empty one too: the header alone, so the
        worker's next append lands); its cursor, or ``None`` if Redis did not take it."""
        if self._redis is None:
            return None
        key, redis = corpus_key(session_id), self._redis
        generation = uuid.uuid4().hex

        def fill() -> bool:  # not after an erasure: it would cache the erased turns again
            entries: list[str | bytes] = [_header(generation), *(p.to_json() for p in passages)]
            return refill_unless_erased(redis, key, state_key(session_id), entries, self._ttl)

        if not self._breakers.redis.attempt(fill, default=False):  # served from DynamoDB this time
            return None
        return CorpusCursor(generation, 1 + len(passages))

    def _drop(self, session_id: str) -> None:
        redis = self._redis
        if redis is None:
            return
        self._breakers.redis.succeeds(
            lambda: redis.delete(corpus_key(session_id)),
            warn="retrieval corpus could not be dropped after a failed write",
        )
