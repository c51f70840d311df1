"""Retrieval memory: the earlier turns most relevant to the new message, from anywhere in the
session, like a search engine: a keyword ranking (BM25 over stemmed words, for names, dates and
numbers) and a semantic one (embeddings), fused by weighted reciprocal rank, then each turn credited with
half its neighbours' scores (what answers a question is often said across consecutive turns;
the weight was tuned on LoCoMo's development conversations, docs/memory.md).
``context.plan_context`` then fits the best of them into the budget.

Only the query's work is on the hot path (one embedding, started as soon as the message is
known, and one ranking over the process's index of the corpus, ``search_index``, brought up to
date with the entries added since its last search); stored turns are embedded after their
reply by the memory worker (``index``).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import bm25s
import numpy as np
import Stemmer

from chatmemory.breakers import Breakers
from chatmemory.embeddings import Embedder, pack
from chatmemory.memory.search_index import SessionIndex
from chatmemory.storage.corpus import CorpusRepository, CorpusUnavailable, Passage
from chatmemory.turns import Turn

RecallMode = Literal["hybrid", "keyword", "unavailable"]
QueriesAhead = dict[str, "Future[np.ndarray | None]"]  # query embeddings started early, by query
# Reciprocal-rank fusion: ranks, not scores, are fused. A smaller k than the usual 60 lets the
# first ranks of either list count for more than its tail. Tuned on LoCoMo's development
# conversations: k 20 with equal weights did better there than k 10 with BM25 weighing 1.5 or 1.2.
RRF_K = 20
KEYWORD_WEIGHT = 1.0
SEMANTIC_WEIGHT = 1.0
NEIGHBOUR_WEIGHT = 0.5  # tuned on LoCoMo's development conversations (docs/eval/)
# More than any budget holds (an 8,000-token prompt holds about 100 turns of a chat), and the
# plan then never walks thousands of them.
MAX_CANDIDATES = 256
INDEXED_SESSIONS = 16  # sessions whose index a process keeps (a Lambda instance serves one at a time)
_REFERRING = re.compile(
    r"\b(it|its|that|this|those|these|they|them|he|she|him|her|one|ones|there|then|same)\b", re.I
)
# A capitalised word that does not open a sentence, or a number: a name, a date, a count,
# which a message that names its topic carries ("When did Melanie paint a sunrise?").
_NAMED = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]+|\d")


@dataclass(frozen=True)
class Recalled:
    candidates: list[Turn] = field(default_factory=list)  # best first
    mode: RecallMode = "unavailable"


EMBEDDED_CHARS = 2_000  # what an embedding reads of a turn (E5 stops at 512 tokens anyway)


def passage_text(turn: Turn) -> str:
    return f"{turn.user}\n{turn.assistant or ''}"


def retrieval_queries(message: str, recent: list[Turn], resolve: bool) -> list[str]:
    """What to search for: the message, and when it refers back ("what about the second
    one?") the previous exchange with it too, as a second query whose rankings are fused with
    the message's own (so the message alone still counts most). A message that stands alone
    searches alone: the previous exchange would only add its own words to the ranking."""
    if not resolve or not recent or not _REFERRING.search(message) or names_topic(message):
        return [message]
    last = recent[-1]
    return [message, f"{last.user}\n{(last.assistant or '')[:500]}\n{message}"]


def names_topic(message: str) -> bool:
    """Whether ``message`` names what it is about (a name, a date, a number): then the previous
    exchange would only add its own words to the ranking, even when it also says "she"."""
    return bool(_NAMED.search(message.strip()))


_STEMMER = Stemmer.Stemmer("english")


def _tokens(texts: list[str]) -> list[list[str]]:
    tokenized = bm25s.tokenize(
        texts, stopwords="en", stemmer=_STEMMER.stemWords, show_progress=False, return_ids=False
    )
    return [list(doc) for doc in tokenized]


def fuse(rankings: list[list[int]], k: int = RRF_K) -> list[int]:
    """Reciprocal rank fusion of rankings of positions, best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, position in enumerate(ranking):
            scores[position] = scores.get(position, 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores, key=lambda position: -scores[position])


def fused_scores(
    rankings: Sequence[Sequence[int] | np.ndarray],
    size: int,
    k: int = RRF_K,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Weighted reciprocal-rank fusion: position p at rank r (from 1) of ranking i scores
    ``weights[i] / (k + r)``, summed over the rankings (weights default to 1)."""
    scores = np.zeros(size)
    for i, ranking in enumerate(rankings):
        if len(ranking):  # each position at most once per ranking
            weight = 1.0 if weights is None else weights[i]
            scores[np.asarray(ranking)] += weight / (k + np.arange(1, len(ranking) + 1))
    return scores


def with_neighbours(
    scores: np.ndarray, turns: list[int] | np.ndarray, weight: float = NEIGHBOUR_WEIGHT
) -> np.ndarray:
    """Each turn's score plus ``weight`` times those of the turns just before and after it
    (consecutive turn numbers only: an expired or unanswered turn breaks the chain)."""
    numbers = np.asarray(turns)
    adjacent = numbers[1:] == numbers[:-1] + 1
    smoothed = scores.copy()
    smoothed[1:] += weight * scores[:-1] * adjacent
    smoothed[:-1] += weight * scores[1:] * adjacent
    return smoothed


class Recall:
    def __init__(self, corpus: CorpusRepository, embedder: Embedder | None, breakers: Breakers) -> None:
        self._corpus, self._embedder, self._breakers = corpus, embedder, breakers
        self._indexes: OrderedDict[str, SessionIndex] = OrderedDict()  # per process, newest last
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def embed_ahead(self, query: str) -> Future[np.ndarray | None] | None:
        """Start embedding ``query`` on a worker thread, so that it overlaps the turn's reads;
        hand the future to ``search``. ``None`` without an embedding model."""
        if self._embedder is None:
            return None
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="query-embedding")
            executor = self._executor
        return executor.submit(self._embed_query, query)

    def search(
        self,
        session_id: str,
        queries: str | list[str],
        exclude: set[int],
        ahead: QueriesAhead | None = None,
    ) -> Recalled:
        """Earlier turns ranked for ``queries``, those in ``exclude`` (already in the prompt)
        left out, the best ``MAX_CANDIDATES``. Keyword-only when the embedding model is
        unavailable or a turn is not embedded yet; ``unavailable`` when the corpus cannot be
        read (the turn answers without it). ``ahead``: query embeddings already started."""
        queries = [queries] if isinstance(queries, str) else queries
        vectors = [self._query_vector(query, ahead or {}) for query in queries]
        try:
            with self._lock:
                return self._rank(session_id, queries, vectors, exclude)
        except CorpusUnavailable:
            return Recalled()

    def _rank(
        self, session_id: str, queries: list[str], vectors: list[np.ndarray | None], exclude: set[int]
    ) -> Recalled:
        index = self._refreshed(session_id)
        if not len(index):
            return Recalled(mode="keyword" if self._embedder is None else "hybrid")
        alive = index.alive(self._corpus.now())
        embedded = index.embedded() & alive
        rankings: list[np.ndarray] = []
        weights: list[float] = []
        semantic = False
        for query, vector in zip(queries, vectors, strict=True):
            terms = _tokens([query])[0]
            if terms:
                keyword = index.keyword.scores(terms)
                rankings.append(_best_first(keyword, (keyword > 0) & alive))
                weights.append(KEYWORD_WEIGHT)
            similarity = index.similarity(vector) if vector is not None else None
            if similarity is not None:
                rankings.append(_best_first(similarity, embedded))
                weights.append(SEMANTIC_WEIGHT)
                semantic = True
        numbers, order = index.numbers(), index.by_number()  # neighbours: consecutive numbers
        fused = fused_scores(rankings, len(index), weights=weights) * alive
        scores = np.empty_like(fused)
        scores[order] = with_neighbours(fused[order], numbers[order])
        candidates: list[Turn] = []
        for slot in np.argsort(-scores, kind="stable"):
            if scores[slot] <= 0 or len(candidates) == MAX_CANDIDATES:
                break
            turn = index.turns[int(slot)]
            if alive[slot] and turn.turn not in exclude:
                candidates.append(turn)
        return Recalled(candidates, "hybrid" if semantic else "keyword")

    def _refreshed(self, session_id: str) -> SessionIndex:
        """The session's index brought up to the cached corpus: the entries added since this
        process last read it, or the whole corpus when it was rebuilt, erased or never read."""
        index = self._indexes.get(session_id)
        read = self._corpus.read_since(session_id, index.cursor if index is not None else None)
        if index is None or read.whole or not index.add(read.passages):
            index = SessionIndex(_tokens, passage_text)
            index.add(read.passages)
        index.cursor = read.cursor  # None (not from Redis): read whole next time
        self._indexes[session_id] = index
        self._indexes.move_to_end(session_id)
        while len(self._indexes) > INDEXED_SESSIONS:
            self._indexes.popitem(last=False)
        return index

    def _query_vector(self, query: str, ahead: QueriesAhead) -> np.ndarray | None:
        started = ahead.get(query)
        return started.result() if started is not None else self._embed_query(query)

    def _embed_query(self, query: str) -> np.ndarray | None:
        if self._embedder is None:
            return None
        return self._breakers.embeddings.attempt(
            self._embedder.embed_query, query, default=None, warn="query embedding failed; keywords only"
        )

    def index(self, session_id: str, turns: list[Turn]) -> int:
        """Embed the answered turns among ``turns`` that the corpus lacks or has without a
        vector, and keep them (off the hot path: the memory worker). Returns how many."""
        known = self._known(session_id)
        todo = [t for t in turns if t.answered and not known.get(t.turn, False)]
        if not todo:
            return 0
        vectors: list[bytes | None] = [None] * len(todo)
        if self._embedder is not None:
            # On a fault the turns are still found by keyword, and embedded later.
            rows = self._breakers.embeddings.attempt(
                self._embedder.embed,
                [passage_text(t)[:EMBEDDED_CHARS] for t in todo],
                default=None,
                warn="embedding failed; keywords only",
            )
            if rows is not None:
                vectors = [pack(row) for row in rows]
        pairs = zip(todo, vectors, strict=True)
        fresh = [Passage(t, v) for t, v in pairs if v is not None or t.turn not in known]
        self._corpus.add(session_id, fresh)
        return len(fresh)

    def _known(self, session_id: str) -> dict[int, bool]:
        """The corpus's turns, and whether each has its vector; none if it cannot be read."""
        try:
            with self._lock:
                return self._refreshed(session_id).known()
        except CorpusUnavailable:
            return {}


def _best_first(scores: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Slots where ``eligible``, by descending score."""
    slots = np.flatnonzero(eligible)
    return slots[np.argsort(-scores[slots], kind="stable")]
