"""The load driver's exactly-once check (local.load.verify) on stored items it must accept or
reject: a lost turn, a duplicated one, a hole, turns out of order."""

from __future__ import annotations

from typing import Any

from local.load import SessionResult, TurnResult, percentiles, verify


def session(*messages: str, mode: str = "full") -> SessionResult:
    result = SessionResult(0, session_id="s")
    result.turns = [TurnResult(m, turn=i, memory_mode=mode) for i, m in enumerate(messages, start=1)]
    return result


def items(*messages: str) -> dict[str, list[dict[str, Any]]]:
    return {"s": [{"turn_number": i, "user_message": m} for i, m in enumerate(messages, start=1)]}


def test_every_turn_stored_once_in_order_passes() -> None:
    verdict = verify([session("a", "b", "c")], items("a", "b", "c"))
    assert (verdict.acknowledged, verdict.stored, verdict.lost, verdict.duplicated) == (3, 3, 0, 0)
    assert verdict.out_of_order_sessions == 0 and not verdict.problems


def test_a_missing_turn_is_lost() -> None:
    verdict = verify([session("a", "b", "c")], items("a", "c"))
    assert verdict.lost == 1 and verdict.out_of_order_sessions == 1


def test_a_turn_stored_twice_is_duplicated() -> None:
    verdict = verify([session("a", "b")], items("a", "b", "b"))
    assert verdict.duplicated == 1 and verdict.out_of_order_sessions == 1


def test_turns_out_of_order_or_with_a_hole_are_caught() -> None:
    assert verify([session("a", "b")], items("b", "a")).out_of_order_sessions == 1
    holed = {"s": [{"turn_number": 1, "user_message": "a"}, {"turn_number": 3, "user_message": "b"}]}
    assert verify([session("a", "b")], holed).out_of_order_sessions == 1


def test_a_queued_turn_may_have_had_a_provisional_number() -> None:
    # Answered while DynamoDB was down (cache_only): done said turn 1, the outbox stored it as 2.
    result = SessionResult(0, session_id="s")
    result.turns = [
        TurnResult("a", turn=1, memory_mode="full"),
        TurnResult("b", turn=1, memory_mode="cache_only"),
    ]
    verdict = verify([result], items("a", "b"))
    assert verdict.lost == verdict.duplicated == verdict.out_of_order_sessions == 0


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentiles(values) == {"p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0, "max_ms": 100.0}
    assert percentiles([])["p50_ms"] is None
