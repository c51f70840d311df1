"""Baselines for what a memory strategy puts in a prompt: rank a session's stored turns against
the new message, then fill the token budget best first and give the model the chosen turns in
chronological order, each with its date.

Each piece stands alone so it can be reused or measured on its own:

* rankers (``recency``, ``BM25Ranker``, ``DenseRanker``) order turn indices best first;
* ``fuse`` combines rankings by reciprocal rank;
* ``fill`` takes a ranking best first until the budget is full;
* ``prompt`` renders the chosen turns and the message as the model's request, and
  ``prompt_tokens`` counts one the way the offline model does (``ceil(chars / 4)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from chatmemory.llm.base import Message, Prompt
from chatmemory.llm.offline import estimate_tokens
from chatmemory.turns import Turn

RRF_K = 60  # the constant of Cormack et al.'s reciprocal rank fusion


def turn_text(turn: Turn) -> str:
    """What a ranker reads of a turn: both sides."""
    return f"{turn.user}\n{turn.assistant or ''}"


def dated(turn: Turn) -> str:
    """The user's side as a retrieved turn carries it: with the day it was said."""
    day = datetime.fromtimestamp(turn.at, UTC).strftime("%-d %B %Y")
    return f"[{day}] {turn.user}"


def turn_cost(turn: Turn) -> int:
    """An upper bound of the turn's share of ``prompt_tokens`` (each part rounded up)."""
    return estimate_tokens(dated(turn)) + estimate_tokens(turn.assistant or "")


def prompt(system: str, turns: Sequence[Turn], message: str, max_tokens: int = 1024) -> Prompt:
    messages: list[Message] = []
    for turn in turns:
        messages.append({"role": "user", "content": dated(turn)})
        messages.append({"role": "assistant", "content": turn.assistant or ""})
    messages.append({"role": "user", "content": message})
    return Prompt(system=system, messages=messages, max_tokens=max_tokens)


def prompt_text(request: Prompt) -> str:
    return request.system + "\n".join(m["content"] for m in request.messages)


def prompt_tokens(request: Prompt) -> int:
    """The offline model's count of a request (its ``count_tokens`` and usage)."""
    return estimate_tokens(request.system + "".join(m["content"] for m in request.messages))


def fill(ranking: Sequence[int], costs: Sequence[int], room: int) -> list[int]:
    """Indices taken best first while they fit ``room`` (one that does not fit is skipped, a
    shorter one after it may still fit), returned in chronological order."""
    chosen: list[int] = []
    for index in ranking:
        if costs[index] <= room:
            chosen.append(index)
            room -= costs[index]
    return sorted(chosen)


def fuse(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[int]:
    """Reciprocal rank fusion: each item scores the sum of ``1 / (k + rank)`` over the rankings
    (rank from 1); ties go to the newer turn."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, index in enumerate(ranking, 1):
            scores[index] = scores.get(index, 0.0) + 1.0 / (k + rank)
    return sorted(scores, key=lambda i: (-scores[i], -i))


def _by_score(scores: np.ndarray[Any, Any]) -> list[int]:
    order = np.lexsort((-np.arange(len(scores)), -scores))  # best score, then newest
    return [int(i) for i in order]


class Ranker(Protocol):
    def rank(self, query: str) -> list[int]:
        """Indices of the indexed turns, best first, every one of them."""
        ...


class Recency:
    """The newest turns first: what a window of the last turns that fit holds."""

    def __init__(self, turns: Sequence[Turn]) -> None:
        self._n = len(turns)

    def rank(self, query: str) -> list[int]:
        return list(range(self._n - 1, -1, -1))


class BM25Ranker:
    """BM25 (``bm25s``) over both sides of each turn, English stop words removed and stemmed."""

    def __init__(self, turns: Sequence[Turn]) -> None:
        import bm25s
        import Stemmer

        self._bm25s = bm25s
        self._stemmer = Stemmer.Stemmer("english")
        tokens = bm25s.tokenize(
            [turn_text(t) for t in turns], stopwords="en", stemmer=self._stemmer, show_progress=False
        )
        self._index = bm25s.BM25()
        self._index.index(tokens, show_progress=False)

    def rank(self, query: str) -> list[int]:
        words = self._bm25s.tokenize(
            [query], stopwords="en", stemmer=self._stemmer, show_progress=False, return_ids=False
        )[0]
        return _by_score(np.asarray(self._index.get_scores(words), dtype=np.float64))


class Embedder(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray[Any, Any]:
        """One unit-length row per text."""
        ...


class WordLlamaEmbedder:
    """WordLlama 0.4's 256-d static embeddings, from the weights its wheel ships (no download:
    the package looks for its tokenizer where it does not ship it, so it is pointed there)."""

    def __init__(self, dim: int = 256) -> None:
        import wordllama

        self._model = wordllama.WordLlama.load(
            dim=dim, cache_dir=Path(wordllama.__file__).parent, disable_download=True
        )

    def embed(self, texts: list[str]) -> np.ndarray[Any, Any]:
        return np.asarray(self._model.embed(texts, norm=True), dtype=np.float32)


class DenseRanker:
    """Cosine similarity between the query's embedding and each turn's (both sides)."""

    def __init__(self, turns: Sequence[Turn], embedder: Embedder) -> None:
        self._embedder = embedder
        self._vectors = embedder.embed([turn_text(t) for t in turns])

    def rank(self, query: str) -> list[int]:
        scores = self._vectors @ self._embedder.embed([query])[0]
        return _by_score(scores.astype(np.float64))


class Fused:
    """BM25 and dense rankings fused by reciprocal rank."""

    def __init__(self, *rankers: Ranker) -> None:
        self._rankers = rankers

    def rank(self, query: str) -> list[int]:
        return fuse([r.rank(query) for r in self._rankers])


def baseline_prompt(
    ranker: Ranker,
    turns: Sequence[Turn],
    system: str,
    message: str,
    budget: int,
    costs: Sequence[int] | None = None,
) -> tuple[Prompt, list[Turn]]:
    """The request a baseline sends: the ranked turns that fit the budget, oldest first
    (``costs``: the turns' ``turn_cost``, when the caller has them already)."""
    room = budget - prompt_tokens(prompt(system, [], message))
    chosen = fill(ranker.rank(message), costs or [turn_cost(t) for t in turns], room)
    kept = [turns[i] for i in chosen]
    return prompt(system, kept, message), kept
