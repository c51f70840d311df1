"""Memory strategies: what each selects, within the budget, in blocks, and when it says so."""

from __future__ import annotations

import itertools

import pytest
from chatmemory.config import MemorySettings, StrategyName
from chatmemory.memory.context import fit_turns, plan_context
from chatmemory.memory.state import Fact, MemoryState
from chatmemory.memory.strategies import STRATEGIES, summary_target
from chatmemory.memory.tokens import TokenEstimator
from chatmemory.turns import Turn
from hypothesis import given
from hypothesis import strategies as st

SYSTEM = "You are a helpful assistant."


def turns(first: int, last: int, size: int = 40) -> list[Turn]:
    return [
        Turn(
            session_id="s",
            turn=n,
            user=f"user {n} " + "u" * size,
            assistant=f"reply {n} " + "a" * size,
            status="complete",
            at=0,
            expires_at=1,
        )
        for n in range(first, last + 1)
    ]


def settings(**overrides: object) -> MemorySettings:
    values: dict[str, object] = {"history_turns": 4, "block_turns": 3, "budget_tokens": 4_000}
    values.update(overrides)
    return MemorySettings.model_validate(values)


def plan(name: StrategyName, history: list[Turn], state: MemoryState | None = None, **overrides: object):  # type: ignore[no-untyped-def]
    return plan_context(
        STRATEGIES[name],
        state or MemoryState(),
        history,
        SYSTEM,
        "the new message",
        settings(**overrides),
        TokenEstimator(4.0),
    )


STATE = MemoryState(
    summary="- The user said: my name is Ada",
    summary_tokens=12,
    facts=[Fact(key="name", value="Ada", turn=6)],
    summarized_through=6,
)


def test_window_keeps_the_last_n_turns() -> None:
    chosen = plan("window", turns(1, 10))
    assert [t.turn for t in chosen.turns] == [7, 8, 9, 10]
    assert chosen.summary is None and chosen.facts == [] and not chosen.truncated


def test_token_budget_keeps_what_fits_dropping_whole_blocks() -> None:
    history = turns(1, 10, size=200)  # ~110 tokens a turn
    chosen = plan("token_budget", history, budget_tokens=600)
    kept = [t.turn for t in chosen.turns]
    assert kept and kept[-1] == 10
    assert (kept[0] - 1) % 3 == 0  # starts on a block boundary
    assert chosen.truncated and chosen.budget.total <= 600


@pytest.mark.parametrize(
    ("name", "summary", "facts"),
    [("summary", True, False), ("facts", False, True), ("hybrid", True, True)],
)
def test_cursor_strategies_send_what_the_summary_does_not_cover(
    name: StrategyName, summary: bool, facts: bool
) -> None:
    chosen = plan(name, turns(3, 12), STATE)
    assert [t.turn for t in chosen.turns] == list(range(7, 13))
    assert (chosen.summary is not None) is summary
    assert bool(chosen.facts) is facts
    assert not chosen.truncated
    system = chosen.prompt(SYSTEM, "hi", 100).system
    assert ("<summary>" in system) is summary and ("<facts>" in system) is facts


def test_a_late_summary_is_a_truncation() -> None:
    # the summary reaches turn 6, but only turns 9.. are loaded: 7 and 8 are nowhere
    chosen = plan("hybrid", turns(9, 20), STATE)
    assert chosen.truncated


def test_what_does_not_fit_is_left_out_and_said() -> None:
    long_summary = STATE.model_copy(update={"summary": "s" * 2_000, "summary_tokens": 500})
    tight = plan("hybrid", turns(7, 12, size=400), long_summary, budget_tokens=300)
    assert tight.truncated and tight.summary is None
    assert tight.facts  # the compact facts block still fits
    assert tight.budget.total <= 300


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=3_000), min_size=0, max_size=40),
    budget=st.integers(min_value=300, max_value=5_000),
    name=st.sampled_from(list(STRATEGIES)),
)
def test_the_budget_holds_on_every_request(sizes: list[int], budget: int, name: StrategyName) -> None:
    history = [
        t.model_copy(update={"user": "x" * s}) for t, s in zip(turns(1, len(sizes)), sizes, strict=True)
    ]
    state = STATE.model_copy(update={"summarized_through": 0})
    chosen = plan(name, history, state, budget_tokens=budget)
    assert chosen.budget.total <= budget
    if len(chosen.turns) < len([t for t in history if t.answered]) and name != "window":
        assert chosen.truncated


def test_dropping_in_blocks_keeps_the_prefix_of_consecutive_requests() -> None:
    estimator = TokenEstimator(4.0)
    starts = []
    for last in range(10, 30):
        kept = fit_turns(turns(1, last, size=200), 700, 1, 5, estimator)
        starts.append(kept[0].turn)
    changes = sum(1 for a, b in itertools.pairwise(starts) if a != b)
    assert changes <= len(starts) // 5 + 1  # the first kept turn moves once per block, not per turn


def test_the_prompt_marks_the_cache_breakpoint_before_the_new_message() -> None:
    prompt = plan("hybrid", turns(7, 9), STATE).prompt(SYSTEM, "new", 100)
    assert prompt.cache_after == len(prompt.messages) - 2
    assert prompt.messages[-1]["content"] == "new"
    assert plan("hybrid", [], STATE).prompt(SYSTEM, "new", 100).cache_after == -1


def test_the_summary_moves_in_whole_blocks_keeping_the_window() -> None:
    s = settings()  # N=4, K=3
    assert summary_target(0, 6, s) is None  # 6 unsummarised: window 4 + 2 < a block
    assert summary_target(0, 7, s) == 3
    assert summary_target(3, 9, s) is None
    assert summary_target(3, 10, s) == 6
    assert summary_target(0, 20, s) == 15  # catching up: several blocks at once
