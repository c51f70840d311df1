"""The per-process search index: BM25 that grows by a document and ranks like bm25s, and a
session's index that takes the corpus entries added since its last read."""

from __future__ import annotations

import random

import bm25s
import numpy as np
from chatmemory.embeddings import normalise, pack
from chatmemory.memory.retrieval import _tokens, passage_text
from chatmemory.memory.search_index import KeywordIndex, SessionIndex
from chatmemory.storage.corpus import Passage
from chatmemory.turns import Turn

WORDS = [
    "harbour",
    "ferry",
    "winter",
    "lantern",
    "orchard",
    "violin",
    "marathon",
    "Tromsø",
    "1987",
    "sourdough",
    "piano",
    "cat",
    "sister",
    "museum",
    "glacier",
    "festival",
    "recipe",
    "garden",
    "bicycle",
    "library",
    "painting",
    "chess",
]


def documents(count: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(count)]


def test_growing_bm25_scores_a_corpus_exactly_as_bm25s_indexes_it_whole() -> None:
    texts = documents(300)
    reference = bm25s.BM25()
    reference.index(_tokens(texts), show_progress=False)
    grown = KeywordIndex()
    for tokens in _tokens(texts):  # one document at a time, as turns arrive
        grown.add(tokens)
    for query in ["winter ferry", "the cat on the piano", "1987 Tromsø marathon marathon", "zebra"]:
        terms = _tokens([query])[0]
        expected = reference.get_scores(terms) if terms else np.zeros(len(texts))
        np.testing.assert_allclose(grown.scores(terms), expected, rtol=1e-5, atol=1e-9)


def turn(number: int, user: str, expires_at: int = 2_000_000_000) -> Turn:
    return Turn(
        session_id="s",
        turn=number,
        user=user,
        assistant="noted",
        status="complete",
        at=1_700_000_000 + number,
        expires_at=expires_at,
    )


def vector(seed: int, width: int = 8) -> bytes:
    return pack(normalise(np.random.default_rng(seed).normal(size=(1, width)))[0])


def test_a_turn_listed_again_with_its_vector_keeps_its_slot_and_gains_the_vector() -> None:
    index = SessionIndex(_tokens, passage_text)
    assert index.add([Passage(turn(1, "the harbour ferry"), None), Passage(turn(2, "a violin"), None)])
    assert index.known() == {1: False, 2: False}

    assert index.add([Passage(turn(1, "the harbour ferry"), vector(1))])

    assert index.known() == {1: True, 2: False}
    assert len(index) == 2 and len(index.keyword) == 2  # counted once
    assert list(index.embedded()) == [True, False]


def test_a_known_turn_listed_with_another_text_asks_for_a_new_index() -> None:
    index = SessionIndex(_tokens, passage_text)
    index.add([Passage(turn(1, "the harbour ferry"), None)])

    assert not index.add([Passage(turn(1, "something else entirely"), None)])
    assert index.turns[0].user == "the harbour ferry"  # nothing taken


def test_expired_turns_are_not_alive_and_vectors_of_another_width_are_ignored() -> None:
    index = SessionIndex(_tokens, passage_text)
    index.add(
        [
            Passage(turn(1, "old", expires_at=1_000), vector(1)),
            Passage(turn(2, "new"), vector(2, width=4)),  # another embedding model's
        ]
    )
    assert list(index.alive(now=2_000)) == [False, True]
    assert list(index.embedded()) == [True, False]
    query = normalise(np.ones((1, 8)))[0]
    similarity = index.similarity(query)
    assert similarity is not None and similarity.shape == (2,)
    assert index.similarity(normalise(np.ones((1, 4)))[0]) is None
