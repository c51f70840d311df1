"""The circuit breakers: pybreaker's states, without serialising the calls they guard."""

from __future__ import annotations

import threading

import pybreaker
import pytest
from chatmemory.breakers import Breakers
from chatmemory.config import BreakerSettings
from chatmemory.errors import TurnConflict
from redis.exceptions import RedisError

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
    from redis.exceptions import ConnectionError as RedisConnectionError

    raise RedisConnectionError("down")  # a fault of the Redis guard the test uses


def test_it_opens_after_fail_max_fails_fast_then_a_trial_call_closes_it() -> None:
    breaker = breakers(fail_max=2, reset=0.2).redis
    for _ in range(2):
        with pytest.raises((RedisError, pybreaker.CircuitBreakerError)):
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


# ---- guarded calls: the fault, the fallback the caller asked for ---------------------------


def test_a_store_fault_gives_the_callers_fallback_and_counts_against_the_breaker() -> None:
    from botocore.exceptions import EndpointConnectionError
    from chatmemory.errors import MemoryUnavailable

    guard = breakers(fail_max=4).dynamodb

    def down() -> int:
        raise EndpointConnectionError(endpoint_url="http://dynamodb")

    assert guard.attempt(down, default=-1) == -1
    assert guard.succeeds(down) is False
    with pytest.raises(MemoryUnavailable) as raised:
        guard.require(down)
    assert isinstance(raised.value.__cause__, EndpointConnectionError)
    assert guard.fail_counter == 3
    assert guard.attempt(down, default=None) is None  # the fourth opens it
    assert guard.current_state == pybreaker.STATE_OPEN
    # Open, the breaker's refusal is a fault too: the same fallbacks, the store not called.
    called: list[bool] = []
    assert guard.attempt(lambda: called.append(True), default="fallback") == "fallback"
    assert not called


def test_what_is_not_the_stores_fault_propagates() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    guards = breakers(fail_max=5)

    def bug() -> None:
        raise KeyError("a bug, not Redis failing")

    for _ in range(10):
        with pytest.raises(KeyError):
            guards.redis.attempt(bug, default=None)
    # Nor does it count towards opening the breaker: a bug never cuts everyone off the store.
    assert guards.redis.current_state == pybreaker.STATE_CLOSED and guards.redis.fail_counter == 0
    # Each guard knows its own dependency's errors: a Redis error is not DynamoDB failing.
    assert guards.redis.is_fault(RedisConnectionError())
    assert not guards.dynamodb.is_fault(RedisConnectionError())
    with pytest.raises(RedisConnectionError):
        guards.dynamodb.attempt(lambda: guards.redis.call(_redis_down), default=None)


def _redis_down() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    raise RedisConnectionError("down")


def test_a_store_fault_our_code_detects_is_a_fault_of_the_guard_it_runs_under() -> None:
    from chatmemory.breakers import StoreFault

    guard = breakers().dynamodb

    def keeps_losing() -> None:
        raise StoreFault("a conditional write lost every race")

    assert guard.attempt(keeps_losing, default="fallback") == "fallback"
    assert guard.fail_counter == 1
