"""Facts are updated and retracted by key, never duplicated; the estimator calibrates."""

from __future__ import annotations

from chatmemory.memory.state import Fact, FactChange, merge_facts, render_facts
from chatmemory.memory.tokens import TokenEstimator


def test_a_new_value_supersedes_the_old_one() -> None:
    facts = merge_facts([], [FactChange(key="Preference", value="green tea")], 10, 40)
    facts = merge_facts(facts, [FactChange(key="preference ", value="black coffee")], 20, 40)
    assert facts == [Fact(key="preference", value="black coffee", turn=20)]


def test_a_retracted_fact_is_removed_and_the_stalest_go_past_the_limit() -> None:
    facts = merge_facts([], [FactChange(key=f"k{i}", value=str(i)) for i in range(3)], 5, 40)
    facts = merge_facts(facts, [FactChange(key="k1", value=None)], 6, 40)
    assert [f.key for f in facts] == ["k0", "k2"]
    facts = merge_facts(facts, [FactChange(key="k9", value="9")], 7, 2)
    assert {f.key for f in facts} == {"k9", "k0"} or {f.key for f in facts} == {"k9", "k2"}
    assert render_facts(facts).count("\n") == 1


def test_the_estimator_calibrates_towards_the_models_count() -> None:
    estimator = TokenEstimator(3.0)
    text = "x" * 400
    assert estimator.estimate(text) == 134
    for _ in range(30):
        estimator.observe(estimator.estimate(text), 100)
    assert abs(estimator.estimate(text) - 100) <= 2
    estimator.observe(100, 100_000)  # a wild observation moves it only so far
    assert estimator.scale <= 2.0
