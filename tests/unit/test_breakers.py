"""The circuit breakers: pybreaker's states, without serialising the calls they guard."""

from __future__ import annotations

import threading

import pybreaker
import pytest
from chatmemory.breakers import Breakers
from chatmemory.config import BreakerSettings
from chatmemory.errors import TurnConflict

from tests.support.waiting import wait_for_probes


def breakers(fail_max: int = 2, reset: float = 0.2) -> Breakers:
    return Breakers.from_settings(BreakerSettings(fail_max=fail_max, reset_timeout_seconds=reset))


def test_calls_through_a_closed_breaker_run_at_the_same_time() -> None:
    breaker = breakers().dynamodb
    both_inside = threading.Barrier(2, timeout=60)  # only a failure waits it out
    results: list[int] = []

    def guarded(n: int) -> int:
        both_inside.wait()  # each call waits inside the breaker for the other
        return n

    def call(n: int) -> None:
        # One call at a time would leave the first alone at the barrier until it breaks.
        results.append(breaker.call(guarded, n))

    threads = [threading.Thread(target=call, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [1, 2] and not both_inside.broken


def fail() -> None:
    raise ConnectionError("down")


def test_it_opens_after_fail_max_fails_fast_then_a_trial_call_closes_it() -> None:
    breaker = breakers(fail_max=2, reset=0.2).redis
    for _ in range(2):
        with pytest.raises((ConnectionError, pybreaker.CircuitBreakerError)):
            breaker.call(fail)
    assert breaker.current_state == pybreaker.STATE_OPEN
    called: list[bool] = []
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(lambda: called.append(True))
    assert not called  # open: the dependency is not called at all
    wait_for_probes(breaker)  # until its reset timeout has run out since it opened
    assert breaker.call(lambda: "ok") == "ok"  # the half-open trial succeeds
    assert breaker.current_state == pybreaker.STATE_CLOSED


def test_a_taken_turn_number_is_not_a_failure() -> None:
    breaker = breakers(fail_max=1).dynamodb

    def conflict() -> None:
        raise TurnConflict("turn 3 exists")

    for _ in range(3):
        with pytest.raises(TurnConflict):
            breaker.call(conflict)
    assert breaker.current_state == pybreaker.STATE_CLOSED
    assert breaker.fail_counter == 0
