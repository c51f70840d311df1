"""Retrieval memory: the earlier turns most relevant to the new message, from anywhere in the
session, like a search engine: a keyword ranking (BM25 over stemmed words, for names, dates and
numbers) and a semantic one (embeddings), fused by reciprocal rank, then each turn credited with
half its neighbours' scores (what answers a question is often said across consecutive turns;
the weight was tuned on LoCoMo's development conversations, docs/memory.md).
``context.plan_context`` then fits the best of them into the budget.

Only the query's work is on the hot path (one embedding, one ranking over the cached corpus);
stored turns are embedded after their reply by the memory worker (``index``).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import bm25s
import numpy as np
import Stemmer

from chatmemory.breakers import Breakers
from chatmemory.embeddings import Embedder, pack, unpack
from chatmemory.memory.corpus import CorpusRepository, CorpusUnavailable, Passage
from chatmemory.observability import logger
from chatmemory.turns import Turn

RecallMode = Literal["hybrid", "keyword", "unavailable"]
RRF_K = 60  # the usual reciprocal-rank constant: ranks, not scores, are fused
NEIGHBOUR_WEIGHT = 0.5  # tuned on LoCoMo's development conversations (docs/eval/)
_REFERRING = re.compile(
    r"\b(it|its|that|this|those|these|they|them|he|she|him|her|one|ones|there|then|same)\b", re.I
)


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
    if not resolve or not recent or not _REFERRING.search(message):
        return [message]
    last = recent[-1]
    return [message, f"{last.user}\n{(last.assistant or '')[:500]}\n{message}"]


_STEMMER = Stemmer.Stemmer("english")


def _tokens(texts: list[str]) -> list[list[str]]:
    tokenized = bm25s.tokenize(
        texts, stopwords="en", stemmer=_STEMMER.stemWords, show_progress=False, return_ids=False
    )
    return [list(doc) for doc in tokenized]


class _KeywordIndexes:
    """BM25 indexes of recent corpora, per process: a corpus that only grew by a turn is
    re-indexed, one that did not change is not."""

    def __init__(self, size: int = 32) -> None:
        self._indexes: OrderedDict[tuple[str, int, int], bm25s.BM25] = OrderedDict()
        self._size, self._lock = size, threading.Lock()

    def get(self, session_id: str, passages: list[Passage]) -> bm25s.BM25:
        key = (session_id, len(passages), passages[-1].turn.turn)
        with self._lock:
            if key in self._indexes:
                self._indexes.move_to_end(key)
                return self._indexes[key]
        index = bm25s.BM25()
        index.index(_tokens([passage_text(p.turn) for p in passages]), show_progress=False)
        with self._lock:
            self._indexes[key] = index
            while len(self._indexes) > self._size:
                self._indexes.popitem(last=False)
        return index


def fuse(rankings: list[list[int]], k: int = RRF_K) -> list[int]:
    """Reciprocal rank fusion of rankings of positions, best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, position in enumerate(ranking):
            scores[position] = scores.get(position, 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores, key=lambda position: -scores[position])


def fused_scores(rankings: list[list[int]], size: int, k: int = RRF_K) -> np.ndarray:
    scores = np.zeros(size)
    for ranking in rankings:
        for rank, position in enumerate(ranking):
            scores[position] += 1.0 / (k + rank + 1)
    return scores


def with_neighbours(scores: np.ndarray, turns: list[int], weight: float = NEIGHBOUR_WEIGHT) -> np.ndarray:
    """Each turn's score plus ``weight`` times those of the turns just before and after it
    (consecutive turn numbers only: an expired or unanswered turn breaks the chain)."""
    numbers = np.array(turns)
    adjacent = numbers[1:] == numbers[:-1] + 1
    smoothed = scores.copy()
    smoothed[1:] += weight * scores[:-1] * adjacent
    smoothed[:-1] += weight * scores[1:] * adjacent
    return smoothed


class Recall:
    def __init__(self, corpus: CorpusRepository, embedder: Embedder | None, breakers: Breakers) -> None:
        self._corpus, self._embedder, self._breakers = corpus, embedder, breakers
        self._keyword = _KeywordIndexes()

    def search(self, session_id: str, queries: str | list[str], exclude: set[int]) -> Recalled:
        """Earlier turns ranked for ``query``, those in ``exclude`` (already in the prompt) left
        out. Keyword-only when the embedding model is unavailable or a turn is not embedded
        yet; ``unavailable`` when the corpus cannot be read (the turn answers without it)."""
        try:
            passages = self._corpus.read(session_id)
        except CorpusUnavailable:
            return Recalled()
        if not passages:
            return Recalled(mode="keyword" if self._embedder is None else "hybrid")
        rankings: list[list[int]] = []
        semantic: list[int] | None = None
        for query in [queries] if isinstance(queries, str) else queries:
            rankings.append(self._keyword_ranking(session_id, passages, query))
            semantic = self._semantic_ranking(passages, query)
            if semantic is not None:
                rankings.append(semantic)
        scores = with_neighbours(fused_scores(rankings, len(passages)), [p.turn.turn for p in passages])
        order = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] > 0]
        candidates = [passages[i].turn for i in order if passages[i].turn.turn not in exclude]
        return Recalled(candidates, "hybrid" if semantic is not None else "keyword")

    def _keyword_ranking(self, session_id: str, passages: list[Passage], query: str) -> list[int]:
        terms = _tokens([query])[0]
        if not terms:
            return []
        index = self._keyword.get(session_id, passages)
        results, scores = index.retrieve([terms], k=len(passages), show_progress=False)
        return [int(i) for i, score in zip(results[0], scores[0], strict=True) if score > 0]

    def _semantic_ranking(self, passages: list[Passage], query: str) -> list[int] | None:
        embedded = [i for i, p in enumerate(passages) if p.vector is not None]
        if self._embedder is None or not embedded:
            return None
        embedder = self._embedder
        try:
            query_vector = self._breakers.embeddings.call(embedder.embed_query, query)
        except Exception as exc:  # any provider fault: keywords still answer
            logger.warning("query embedding failed; keywords only", extra={"error": type(exc).__name__})
            return None
        matrix = np.stack([unpack(passages[i].vector or b"") for i in embedded])
        similarity = matrix @ query_vector
        return [embedded[i] for i in np.argsort(-similarity)]

    def index(self, session_id: str, turns: list[Turn]) -> int:
        """Embed the answered turns among ``turns`` that the corpus lacks or has without a
        vector, and keep them (off the hot path: the memory worker). Returns how many."""
        known = {p.turn.turn: p.vector is not None for p in self._safe_read(session_id)}
        todo = [t for t in turns if t.answered and not known.get(t.turn, False)]
        if not todo:
            return 0
        vectors: list[bytes | None] = [None] * len(todo)
        if self._embedder is not None:
            embedder = self._embedder
            try:
                rows = self._breakers.embeddings.call(
                    embedder.embed, [passage_text(t)[:EMBEDDED_CHARS] for t in todo]
                )
                vectors = [pack(row) for row in rows]
            except Exception as exc:  # the turns are still found by keyword; embedded later
                logger.warning("embedding failed; keywords only", extra={"error": type(exc).__name__})
        pairs = zip(todo, vectors, strict=True)
        fresh = [Passage(t, v) for t, v in pairs if v is not None or t.turn not in known]
        self._corpus.add(session_id, fresh)
        return len(fresh)

    def _safe_read(self, session_id: str) -> list[Passage]:
        try:
            return self._corpus.read(session_id)
        except CorpusUnavailable:
            return []
