"""A session's corpus as search needs it, kept per process and grown in place.

A warm process reads only the corpus entries added since its last search
(``CorpusRepository.read_since``) and adds them here: their keyword counts and their vectors.
bm25s cannot add a document to an index, and rebuilding one costs about 34 ms at 1,000 turns
and 200 ms at 5,000 (2-core Xeon), every turn, since the memory worker adds the previous
turn between two messages. So the keyword side keeps the raw term counts, which grow by a
document in microseconds, and scores a query with the formula of bm25s's default (Lucene's
BM25, same ``k1`` and ``b``): the unit tests check that both rank a corpus alike. bm25s
still tokenizes (stop words, Snowball stemming).
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from chatmemory.embeddings import unpack
from chatmemory.storage.corpus import CorpusCursor, Passage
from chatmemory.turns import Turn

K1, B = 1.5, 0.75  # bm25s's defaults
# A Lambda has one or two vCPUs: OpenBLAS's threads would only contend with the turn's own
# (a 5,000 x 256 similarity took 3 ms with them on a busy 2-core machine, 0.7 ms without).
threadpool_limits(limits=1, user_api="blas")


class _Rows:
    """A growable 2-D array: appends in amortised constant time, no copy per row."""

    def __init__(self, width: int, dtype: type = np.float32) -> None:
        self._data: np.ndarray = np.zeros((16, width), dtype=dtype)
        self._size = 0

    @property
    def width(self) -> int:
        return int(self._data.shape[1])

    def put(self, row: int, values: np.ndarray) -> None:
        if row >= len(self._data):
            grown = np.zeros((max(2 * len(self._data), row + 1), self.width), dtype=self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[row] = values
        self._size = max(self._size, row + 1)

    def view(self, size: int) -> np.ndarray:
        return self._data[:size]


class KeywordIndex:
    """BM25 over documents added one at a time (term counts kept, scores computed per query)."""

    def __init__(self, k1: float = K1, b: float = B) -> None:
        self._k1, self._b = k1, b
        # term: (documents, counts), typed buffers numpy reads without a copy
        self._postings: dict[str, tuple[array[int], array[float]]] = {}
        self._lengths = _Rows(1, np.float64)
        self._count = self._total_length = 0

    def __len__(self) -> int:
        return self._count

    def add(self, tokens: list[str]) -> None:
        document = self._count
        for term, count in Counter(tokens).items():
            documents, counts = self._postings.setdefault(term, (array("l"), array("d")))
            documents.append(document)
            counts.append(count)
        self._lengths.put(document, np.array([len(tokens)]))
        self._count += 1
        self._total_length += len(tokens)

    def scores(self, query: list[str]) -> np.ndarray:
        """Every document's BM25 score for ``query`` (a repeated term counts each time, as in
        bm25s); zeros where no term matches."""
        scores = np.zeros(self._count)
        if not self._total_length:
            return scores
        lengths = self._lengths.view(self._count)[:, 0]
        norm = self._k1 * (1 - self._b + self._b * lengths / (self._total_length / self._count))
        for term in query:
            posting = self._postings.get(term)
            if posting is None:
                continue
            documents = np.frombuffer(posting[0], dtype=np.int_)
            counts = np.frombuffer(posting[1], dtype=np.float64)
            frequency = len(documents)
            idf = math.log(1 + (self._count - frequency + 0.5) / (frequency + 0.5))
            scores[documents] += idf * counts / (norm[documents] + counts)
        return scores


class SessionIndex:
    """One session's corpus as of ``cursor``, by slot (the order turns first arrived): each
    turn's newest entry, its keyword counts and its vector."""

    def __init__(self, tokenize: Callable[[list[str]], list[list[str]]], text: Callable[[Turn], str]) -> None:
        self._tokenize, self._text = tokenize, text
        self.cursor: CorpusCursor | None = None
        self.turns: list[Turn] = []
        self.keyword = KeywordIndex()
        self._slots: dict[int, int] = {}  # turn number: slot
        self._vectors: _Rows | None = None
        self._embedded = _Rows(1, np.bool_)
        self._order: np.ndarray | None = None  # slots by turn number, computed when asked
        self._numbers = _Rows(1, np.int64)
        self._expiry = _Rows(1, np.int64)

    def __len__(self) -> int:
        return len(self.turns)

    def add(self, passages: list[Passage]) -> bool:
        """Take entries in list order; ``False`` (and nothing taken) if one lists a known turn
        with another text, which counts cannot take back: the caller builds a new index."""
        for passage in passages:
            slot = self._slots.get(passage.turn.turn)
            if slot is not None and self._text(self.turns[slot]) != self._text(passage.turn):
                return False
        fresh: dict[int, Turn] = {}
        for passage in passages:
            number = passage.turn.turn
            if number not in self._slots:
                fresh[number] = passage.turn  # listed twice in one read: the later text
        tokenized = self._tokenize([self._text(t) for t in fresh.values()]) if fresh else []
        for tokens, turn in zip(tokenized, fresh.values(), strict=True):
            slot = len(self.turns)
            self._slots[turn.turn] = slot
            self.turns.append(turn)
            self._embedded.put(slot, np.array([False]))
            self._order = None
            self.keyword.add(tokens)
            self._numbers.put(slot, np.array([turn.turn]))
        for passage in passages:  # the later entry for a turn wins: its status, its vector
            slot = self._slots[passage.turn.turn]
            self.turns[slot] = passage.turn
            self._expiry.put(slot, np.array([passage.turn.expires_at]))
            if passage.vector is not None:
                self._put_vector(slot, unpack(passage.vector))
        return True

    def _put_vector(self, slot: int, vector: np.ndarray) -> None:
        if self._vectors is None:
            self._vectors = _Rows(len(vector))
        if len(vector) != self._vectors.width:  # another embedding model: found by keyword only
            return
        self._vectors.put(slot, vector)
        self._embedded.put(slot, np.array([True]))

    def known(self) -> dict[int, bool]:
        """Each turn number, and whether its vector is here."""
        embedded = self.embedded()
        return {turn.turn: bool(embedded[slot]) for slot, turn in enumerate(self.turns)}

    def alive(self, now: int) -> np.ndarray:
        return self._expiry.view(len(self.turns))[:, 0] > now

    def numbers(self) -> np.ndarray:
        return self._numbers.view(len(self.turns))[:, 0]

    def by_number(self) -> np.ndarray:
        """The slots in turn-number order."""
        if self._order is None:
            self._order = np.argsort(self.numbers(), kind="stable")
        return self._order

    def embedded(self) -> np.ndarray:
        return self._embedded.view(len(self.turns))[:, 0]

    def similarity(self, query: np.ndarray) -> np.ndarray | None:
        """Each slot's cosine similarity with ``query`` (unit vectors); ``None`` if no vector
        of that width is stored. Slots without a vector score 0 (mask them with ``embedded``)."""
        if self._vectors is None or self._vectors.width != len(query) or not self.embedded().any():
            return None
        # np.dot, not @: a matrix-vector product 4x faster here (OpenBLAS's gemv)
        similarity: np.ndarray = np.dot(self._vectors.view(len(self.turns)), query.astype(np.float32))
        return similarity
