"""Cross-session retrieval's pieces alone: the owner values, the query embedding shared by both
searches, the candidates' order, and the prompt and budget they share with the session's own."""

from __future__ import annotations

import numpy as np
import pytest
from chatmemory.config import MemorySettings
from chatmemory.embeddings import Vectors, normalise
from chatmemory.memory.context import ACROSS_INTRO, plan_context
from chatmemory.memory.crosssession import QueryMemo, interleave, owner_value
from chatmemory.memory.state import MemoryState
from chatmemory.memory.strategies import STRATEGIES
from chatmemory.memory.tokens import TokenEstimator
from chatmemory.turns import Turn


def turn(session: str, number: int, text: str = "a message of about forty characters, ok") -> Turn:
    return Turn(
        session_id=session,
        turn=number,
        user=text,
        assistant="and a reply of about forty characters ok",
        status="complete",
        at=1_700_000_000 + number * 60 + (0 if session == "now" else -86_400),
        expires_at=2_000_000_000,
    )


def test_owner_values_depend_on_the_key_the_principal_and_the_generation() -> None:
    value = owner_value(b"k", "user:alice", 7)
    assert value == owner_value(b"k", "user:alice", 7)
    assert len({value, owner_value(b"k2", "user:alice", 7), owner_value(b"k", "user:bob", 7)}) == 3
    assert value != owner_value(b"k", "user:alice", 8)
    assert "alice" not in value


class CountingEmbedder:
    name = "counting"

    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail = 0, fail

    def embed(self, texts: list[str]) -> Vectors:
        return normalise(np.ones((len(texts), 4)))

    def embed_query(self, text: str) -> Vectors:
        self.calls += 1
        if self.fail:
            raise TimeoutError("provider down")
        return normalise(np.ones((1, 4)))[0]


def test_a_message_is_embedded_once_for_both_searches_and_a_failure_is_not_retried() -> None:
    inner = CountingEmbedder()
    memo = QueryMemo(inner)
    first, second = memo.embed_query("hello"), memo.embed_query("hello")
    assert inner.calls == 1 and np.array_equal(first, second)
    assert memo.remembered("hello") is not None and memo.remembered("other") is None

    failing = CountingEmbedder(fail=True)
    now = [0.0]
    memo = QueryMemo(failing, failure_seconds=10, clock=lambda: now[0])
    for _ in range(2):
        with pytest.raises(TimeoutError):
            memo.embed_query("hello")
    assert failing.calls == 1
    # A later message with the same text (a new turn) asks the provider again.
    now[0] = 10.0
    with pytest.raises(TimeoutError):
        memo.embed_query("hello")
    assert failing.calls == 2


def test_candidates_alternate_between_the_two_rankings() -> None:
    own = [turn("now", n) for n in (5, 3, 9)]
    other = [turn("then", 2)]
    assert [(t.session_id, t.turn) for t in interleave(own, other)] == [
        ("now", 5),
        ("then", 2),
        ("now", 3),
        ("now", 9),
    ]


def test_another_session_s_turn_with_a_number_already_in_the_prompt_still_comes_and_is_labelled() -> None:
    settings = MemorySettings(budget_tokens=2_000)
    turns = [turn("now", n) for n in range(1, 4)]
    estimator = TokenEstimator(3.5)
    found = turn("then-session", 2, "The shed code is 7319.")

    plan = plan_context(
        STRATEGIES["retrieval"],
        MemoryState(),
        turns,
        "system",
        "what is the shed code?",
        settings,
        estimator,
        None,
        [found],
        "hybrid",
        session_id="now",
    )

    assert plan.recalled == [found]
    assert plan.budget.retrieved >= estimator.estimate(ACROSS_INTRO.format(""))
    assert plan.budget.total <= settings.budget_tokens
    message = plan.prompt("system", "what is the shed code?", 100).messages[-1]["content"]
    assert message.startswith("From the user's earlier conversations")
    assert "[conversation then-ses · " in message and "User: The shed code is 7319." in message
    assert message.endswith("</earlier-conversations>\n\nwhat is the shed code?")
