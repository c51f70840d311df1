"""Cross-session retrieval: the earlier turns of a principal's *other* sessions most relevant to
the new message, for principals who opted in to long-term memory.

In DynamoDB it is the table's vector index ``by_owner_vector`` (template.yaml): a turn item is in
it once it carries ``owner`` (its search key) and ``fvec`` (its embedding, a list of float32
numbers). The memory worker writes both, after the reply, on the turns of opted-in principals
only; a turn is found with ``SearchVectors`` and ``owner = :value``, nothing else.

The owner value is an HMAC of the principal and of its long-term memory's generation, with a key
that never leaves the server: a client can neither choose nor guess another principal's, and it
is never derived from anything in a request. Opting out erases the memory item, and opting in
again starts a new generation, so the vectors written before the opt-out match no owner anyone
queries. The search is also skipped at query time for anyone not opted in, and a result is kept
only if its item names the asking principal (a second check, should an owner value ever collide).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from chatmemory.breakers import Breakers
from chatmemory.embeddings import Embedder, Vectors, unpack
from chatmemory.observability import logger
from chatmemory.storage.turns import item_turn
from chatmemory.storage.user_memory import UserMemory, UserMemoryRepository, eligible
from chatmemory.storage.vector_index import MAX_TOP_K, OWNER, VectorIndexStore
from chatmemory.turns import Turn

if TYPE_CHECKING:
    pass

CrossSessionMode = Literal["hybrid", "unavailable"]


def owner_value(key: bytes, principal: str, generation: int) -> str:
    """The search key of a principal's turns, for one generation of its long-term memory."""
    return hmac.new(key, f"{principal}\x00{generation}".encode(), hashlib.sha256).hexdigest()


class QueryMemo:
    """An embedder that remembers the last few queries it embedded (or failed to): in-session
    and cross-session retrieval search with one embedding of the message (the first one made
    on a worker thread as soon as the message is known), and a provider that just failed is not
    asked again for the same text within ``failure_seconds`` (the rest of that turn); a later
    message with the same text asks again. Shared by the process's threads: the same text has
    the same vector whoever asks."""

    def __init__(
        self,
        inner: Embedder,
        size: int = 8,
        failure_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self._inner, self._size = inner.name, inner, size
        self._failure_seconds, self._clock = failure_seconds, clock
        self._memo: dict[str, tuple[float, Vectors | Exception]] = {}
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> Vectors:
        return self._inner.embed(texts)

    def remembered(self, text: str) -> Vectors | Exception | None:
        """The last embedding of ``text`` (or its recent failure), if there is one."""
        with self._lock:
            entry = self._memo.get(text)
        if entry is None:
            return None
        at, found = entry
        if isinstance(found, Exception) and self._clock() - at >= self._failure_seconds:
            return None
        return found

    def embed_query(self, text: str) -> Vectors:
        found = self.remembered(text)
        if found is None:
            try:
                found = self._inner.embed_query(text)
            except Exception as exc:  # remembered and raised again: one attempt per query
                found = exc
            with self._lock:
                self._memo.pop(text, None)  # re-inserted last: the newest is evicted last
                self._memo[text] = (self._clock(), found)
                while len(self._memo) > self._size:
                    self._memo.pop(next(iter(self._memo)))
        if isinstance(found, Exception):
            raise found
        return found


class OwnerKeyUnavailable(Exception):
    """The owner key is configured and could not be read."""


@dataclass(frozen=True)
class Across:
    """What the search found: turns of other sessions, best first."""

    turns: list[Turn] = field(default_factory=list)
    mode: CrossSessionMode = "hybrid"


class CrossSession:
    def __init__(
        self,
        store: VectorIndexStore,
        embedder: Embedder | None,
        breakers: Breakers,
        users: UserMemoryRepository,
        owner_key: Callable[[], bytes | None],
        dimensions: int,
        top_k: int,
        clock: Callable[[], float],
    ) -> None:
        self._store, self._embedder, self._breakers, self._users = store, embedder, breakers, users
        self._owner_key, self._dimensions, self._top_k, self._clock = owner_key, dimensions, top_k, clock

    def _owner(self, principal: str, memory: UserMemory) -> str | None:
        """``None`` when no key is configured; raises ``OwnerKeyUnavailable`` when it is and
        cannot be read."""
        try:
            key = self._owner_key()
        except Exception as exc:  # Secrets Manager unreachable, denied, misnamed
            logger.warning("owner key unavailable", extra={"error": type(exc).__name__})
            raise OwnerKeyUnavailable() from exc
        return owner_value(key, principal, memory.generation) if key else None

    # ---- the hot path -----------------------------------------------------------------

    def search(self, principal: str, memory: UserMemory, session_id: str, query: str) -> Across | None:
        """Turns of the principal's other sessions for ``query``; ``None`` when it does not
        apply (not opted in, no embedding model or key), ``unavailable`` when it failed (the
        turn answers without it)."""
        if not memory.long_term or not eligible(principal) or self._embedder is None:
            return None
        try:
            owner = self._owner(principal, memory)
        except OwnerKeyUnavailable:
            return Across(mode="unavailable")
        if owner is None:
            return None
        embedder = self._embedder
        known = embedder.remembered(query) if isinstance(embedder, QueryMemo) else None
        failed = "cross-session query embedding failed"  # the turn goes on without it
        if isinstance(known, Exception):  # failed for in-session retrieval already
            logger.warning(failed, extra={"error": type(known).__name__})
            return Across(mode="unavailable")
        vector = known
        if vector is None:
            vector = self._breakers.embeddings.attempt(embedder.embed_query, query, default=None, warn=failed)
            if vector is None:
                return Across(mode="unavailable")
        if len(vector) != self._dimensions:
            logger.warning("cross-session retrieval off: embedding and index dimensions differ")
            return None
        # The session's own turns are in the index too: ask for enough to leave them out.
        top_k = min(MAX_TOP_K, 3 * self._top_k + 10)
        hits = self._breakers.vectors.attempt(
            self._store.search, owner, vector, top_k, default=None, warn="cross-session search failed"
        )
        if hits is None:
            return Across(mode="unavailable")
        now = int(self._clock())
        turns = [
            turn
            for turn in (_turn(item) for item, _ in hits)
            if turn is not None
            and turn.session_id != session_id
            and turn.principal == principal
            and turn.answered
            and turn.expires_at > now
        ]
        return Across(turns[: self._top_k])

    # ---- the memory worker -------------------------------------------------------------

    def index(self, session_id: str, turns: list[Turn]) -> int:
        """Put the session's embedded turns among ``turns`` in the index when their principal
        opted in, and only those said since (consent); returns how many. Faults are logged:
        the next run finds the turns still unindexed and indexes them."""
        principals = {t.principal for t in turns if t.principal}
        if len(principals) != 1 or not turns:
            return 0
        principal = str(next(iter(principals)))
        memory = self._users.read(principal) if eligible(principal) else None
        if memory is None or not memory.long_term:
            return 0
        try:
            owner = self._owner(principal, memory)
        except OwnerKeyUnavailable:
            return 0  # indexed by a later run
        if owner is None:
            return 0
        first, last = min(t.turn for t in turns), max(t.turn for t in turns)
        dynamodb, failed = self._breakers.dynamodb, "cross-session indexing failed; retried later"
        rows = dynamodb.attempt(self._store.candidates, session_id, first, last, default=None, warn=failed)
        done = 0
        for row in rows or []:
            said = Turn(
                session_id=session_id,
                turn=int(row["turn_number"]),
                user="",
                at=int(row.get("created_at", 0)),
                expires_at=0,
            )
            if (
                row.get("principal") != principal
                or row.get("status") != "complete"
                or row.get("vec") is None
                or row.get(OWNER) == owner
                or not memory.consented(said)
            ):
                continue
            vector = unpack(bytes(row["vec"]))
            if len(vector) != self._dimensions:
                logger.warning("cross-session index skipped: embedding and index dimensions differ")
                return done
            number = int(row["turn_number"])
            if not dynamodb.succeeds(
                self._store.tag, session_id, number, principal, owner, vector, warn=failed
            ):
                return done
            done += 1
        return done


def _turn(item: dict[str, Any]) -> Turn | None:
    try:
        return item_turn(item)
    except (KeyError, ValueError, TypeError):
        return None  # not a whole turn: never put half of one in a prompt


def interleave(own: list[Turn], other: list[Turn]) -> list[Turn]:
    """One list of candidates, best first, taking from each ranking in turn: the session's
    own and the other sessions' rank on scores that cannot be compared."""
    merged: list[Turn] = []
    for i in range(max(len(own), len(other))):
        merged.extend(ranking[i] for ranking in (own, other) if i < len(ranking))
    return merged
