"""Retrieval's pieces alone: fusion, neighbour credit, the query, the compact vectors and the
budget that retrieved turns share with the rest of the prompt."""

from __future__ import annotations

import numpy as np
from chatmemory.config import MemorySettings
from chatmemory.embeddings import normalise, pack, unpack
from chatmemory.memory.context import plan_context
from chatmemory.memory.retrieval import fuse, fused_scores, retrieval_queries, with_neighbours
from chatmemory.memory.state import MemoryState
from chatmemory.memory.strategies import STRATEGIES
from chatmemory.memory.tokens import TokenEstimator
from chatmemory.turns import Turn


def turn(number: int, text: str = "a message of about forty characters, ok", at: int = 1_700_000_000) -> Turn:
    return Turn(
        session_id="s",
        turn=number,
        user=text,
        assistant="and a reply of about forty characters ok",
        status="complete",
        at=at + number * 60,
        expires_at=2_000_000_000,
    )


def test_reciprocal_rank_fusion_prefers_what_both_rankings_agree_on() -> None:
    assert fuse([[1, 2, 3], [3, 1, 2]])[0] == 1
    assert fuse([[5], [6]]) in ([5, 6], [6, 5])
    assert set(fuse([[1], [2], [3]])) == {1, 2, 3}


def test_a_turn_is_credited_with_half_its_neighbours_only_across_consecutive_numbers() -> None:
    scores = fused_scores([[1]], size=3)  # only the middle one matched
    smoothed = with_neighbours(scores, [4, 5, 7])  # 5 and 7 are not neighbours
    assert smoothed[0] == scores[1] * 0.5
    assert smoothed[1] == scores[1]
    assert smoothed[2] == 0


def test_a_message_that_stands_alone_searches_alone_one_that_refers_back_brings_the_last_exchange() -> None:
    recent = [turn(1, "Compare Postgres and MySQL for a small shop")]
    assert retrieval_queries("What is the capital of Peru?", recent, resolve=True) == [
        "What is the capital of Peru?"
    ]
    queries = retrieval_queries("what about the second one?", recent, resolve=True)
    assert queries[0] == "what about the second one?"
    assert "Postgres and MySQL" in queries[1]
    assert retrieval_queries("what about the second one?", recent, resolve=False) == [
        "what about the second one?"
    ]


def test_packed_vectors_keep_their_direction() -> None:
    rng = np.random.default_rng(7)
    vector = normalise(rng.normal(size=(1, 384)))[0]
    blob = pack(vector)
    assert len(blob) == 4 + 384
    assert float(unpack(blob) @ vector) > 0.999


def test_retrieved_turns_fill_the_room_the_newest_turns_leave_and_never_the_limit() -> None:
    settings = MemorySettings(
        budget_tokens=1_000, history_turns=10, block_turns=1, retrieval_recent_share=0.25
    )
    turns = [turn(n) for n in range(1, 101)]
    estimator = TokenEstimator(3.5)
    best_first = list(reversed(turns[:90]))  # any order: plan keeps the best that fit

    plan = plan_context(
        STRATEGIES["retrieval"],
        MemoryState(),
        turns,
        "system",
        "hi?",
        settings,
        estimator,
        None,
        best_first,
        "hybrid",
    )

    assert plan.budget.total <= settings.budget_tokens
    assert plan.turns and plan.turns[-1].turn == 100  # the newest turns stay as messages
    assert plan.budget.history <= 0.25 * settings.budget_tokens
    assert plan.recalled and [t.turn for t in plan.recalled] == sorted(t.turn for t in plan.recalled)
    assert not {t.turn for t in plan.recalled} & {t.turn for t in plan.turns}
    assert plan.truncated is False  # what is left out is searched, not dropped
    message = plan.prompt("system", "hi?", 100).messages[-1]["content"]
    assert message.endswith("hi?") and message.count("[turn ") == len(plan.recalled)


def test_a_short_session_keeps_every_turn_as_messages_and_retrieves_nothing() -> None:
    settings = MemorySettings(budget_tokens=8_000)
    turns = [turn(n) for n in range(1, 6)]
    plan = plan_context(
        STRATEGIES["retrieval"],
        MemoryState(),
        turns,
        "system",
        "hi?",
        settings,
        TokenEstimator(3.5),
        None,
        list(turns),
        "hybrid",
    )
    assert [t.turn for t in plan.turns] == [1, 2, 3, 4, 5]
    assert plan.recalled == [] and plan.budget.retrieved == 0


def test_when_the_search_failed_what_does_not_fit_is_truncation() -> None:
    settings = MemorySettings(budget_tokens=600, history_turns=10, block_turns=1)
    turns = [turn(n) for n in range(1, 60)]
    plan = plan_context(
        STRATEGIES["retrieval"],
        MemoryState(),
        turns,
        "s",
        "hi?",
        settings,
        TokenEstimator(3.5),
        None,
        [],
        "unavailable",
    )
    assert plan.truncated is True
