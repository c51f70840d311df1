"""Retrieval's pieces alone: fusion, neighbour credit, the query, the compact vectors and the
budget that retrieved turns share with the rest of the prompt."""

from __future__ import annotations

import numpy as np
from chatmemory.config import MemorySettings
from chatmemory.embeddings import normalise, pack, unpack
from chatmemory.memory.context import ContextPlan, blank, plan_context, recalled_block
from chatmemory.memory.retrieval import fuse, fused_scores, retrieval_queries, with_neighbours
from chatmemory.memory.state import MemoryState
from chatmemory.memory.strategies import STRATEGIES
from chatmemory.memory.tokens import MESSAGE_OVERHEAD, TokenEstimator
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


def searched_plan(
    strategy: str,
    state: MemoryState,
    turns: list[Turn],
    settings: MemorySettings,
    ranked: list[Turn],
    recall: str = "hybrid",
) -> ContextPlan:
    """``plan_context`` after a search that ranked ``ranked`` (``recall``: how it searched)."""
    return plan_context(
        STRATEGIES[strategy],
        state,
        turns,
        "system",
        "hi?",
        settings,
        TokenEstimator(3.5),
        None,
        ranked,
        recall,
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
    settings = MemorySettings(budget_tokens=1_000, history_turns=10, block_turns=1, retrieval_recent_turns=4)
    turns = [turn(n) for n in range(1, 101)]
    best_first = list(reversed(turns[:90]))  # any order: plan keeps the best that fit

    plan = searched_plan("retrieval", MemoryState(), turns, settings, best_first, "hybrid")

    assert plan.budget.total <= settings.budget_tokens
    assert [t.turn for t in plan.turns] == [97, 98, 99, 100]  # the newest turns stay as messages
    assert plan.recalled and [t.turn for t in plan.recalled] == sorted(t.turn for t in plan.recalled)
    assert not {t.turn for t in plan.recalled} & {t.turn for t in plan.turns}
    assert plan.truncated is False  # what is left out is searched, not dropped
    request = plan.prompt("system", "hi?", 100)
    message = request.messages[-1]["content"]
    assert message.endswith("hi?") and message.count("User: ") == len(plan.recalled)
    # The budget's count of the block is an upper bound of the offline model's (4 chars a token).
    block = message.removesuffix("hi?")
    assert plan.budget.retrieved >= len(block) / 4 - len(plan.recalled)


def test_consecutive_retrieved_turns_of_one_day_share_one_header() -> None:
    day = 1_700_000_000
    turns = [turn(3, at=day), turn(4, at=day), turn(5, at=day), turn(9, at=day), turn(10, at=day + 86_400)]
    block = recalled_block(turns, "s")
    headers = [line for line in block.splitlines() if line.startswith("[")]
    # 3-5 said in a row, 9 after a gap the same day, 10 the next day.
    assert headers == ["[14 November 2023]", "[14 November 2023]", "[15 November 2023]"]
    assert block.count("User: ") == 5 and block.count("Assistant: ") == 5


def test_a_run_costs_one_header_and_the_block_is_costed_whole() -> None:
    settings = MemorySettings(budget_tokens=1_200, history_turns=2, block_turns=1, retrieval_recent_turns=2)
    turns = [turn(n) for n in range(1, 61)]
    estimator = TokenEstimator(3.5)
    consecutive = [turns[n] for n in range(10, 30)]  # one run
    scattered = [turns[n] for n in range(0, 58, 3)]  # none adjoining
    plans = [
        searched_plan("retrieval", MemoryState(), turns, settings, ranked, "hybrid")
        for ranked in (consecutive, scattered)
    ]
    assert len(plans[0].recalled) == len(consecutive)
    per_turn = [p.budget.retrieved / len(p.recalled) for p in plans]
    assert per_turn[0] < per_turn[1]  # headers saved
    for plan in plans:
        block = plan.prompt("s", "hi?", 100).messages[-1]["content"].removesuffix("hi?")
        markup = recalled_block([blank(t) for t in plan.recalled], "s")
        text = sum(estimator.turn_tokens(t) - 2 * MESSAGE_OVERHEAD for t in plan.recalled)
        assert plan.budget.retrieved == text + estimator.estimate(markup)
        assert len(block) == len(markup) + sum(len(t.user) + len(t.assistant or "") for t in plan.recalled)


def test_when_crowded_the_summary_gives_way_past_its_share_and_nothing_is_truncated() -> None:
    settings = MemorySettings(
        budget_tokens=900,
        history_turns=10,
        block_turns=10,
        retrieval_recent_turns=4,
        retrieval_memory_share=0.08,
    )
    turns = [turn(n) for n in range(1, 81)]
    long_summary = MemoryState(summary="word " * 300, summary_tokens=300, summarized_through=60)
    short_summary = MemoryState(summary="a short summary", summary_tokens=4, summarized_through=60)
    plans = [
        searched_plan("hybrid", state, turns, settings, list(reversed(turns[:60])), "hybrid")
        for state in (long_summary, short_summary)
    ]
    gave_way, kept = plans
    assert gave_way.summary is None and gave_way.budget.summary == 0 and not gave_way.truncated
    assert kept.summary == "a short summary"
    assert len(gave_way.recalled) > len(kept.recalled) - 1
    # Without a search the same summary stays: nothing else would bring those turns back.
    alone = plan_context(STRATEGIES["hybrid"], long_summary, turns, "s", "hi?", settings, TokenEstimator(3.5))
    assert alone.summary is not None


def test_a_message_that_names_its_topic_is_not_rewritten_even_when_it_says_she() -> None:
    recent = [turn(1, "Compare Postgres and MySQL for a small shop")]
    assert retrieval_queries("When did Melanie say she would paint it?", recent, resolve=True) == [
        "When did Melanie say she would paint it?"
    ]
    assert retrieval_queries("what did she pay in 2022 for it?", recent, resolve=True) == [
        "what did she pay in 2022 for it?"
    ]
    assert len(retrieval_queries("what did she think of it?", recent, resolve=True)) == 2


def test_weighted_fusion_favours_the_heavier_ranking_and_k_sharpens_the_top() -> None:
    scores = fused_scores([[0, 1], [1, 0]], size=2, k=10, weights=[1.5, 1.0])
    assert scores[0] > scores[1]
    assert scores[0] == 1.5 / 11 + 1.0 / 12
    assert fused_scores([[0, 1]], size=2, k=1)[0] / fused_scores([[0, 1]], size=2, k=1)[1] > 1.4


def test_a_short_session_keeps_every_turn_as_messages_and_retrieves_nothing() -> None:
    settings = MemorySettings(budget_tokens=8_000)
    turns = [turn(n) for n in range(1, 6)]
    plan = searched_plan("retrieval", MemoryState(), turns, settings, list(turns), "hybrid")
    assert [t.turn for t in plan.turns] == [1, 2, 3, 4, 5]
    assert plan.recalled == [] and plan.budget.retrieved == 0


def test_when_the_search_failed_what_does_not_fit_is_truncation() -> None:
    settings = MemorySettings(budget_tokens=600, history_turns=10, block_turns=1)
    turns = [turn(n) for n in range(1, 60)]
    plan = searched_plan("retrieval", MemoryState(), turns, settings, [], "unavailable")
    assert plan.truncated is True
