"""One pybreaker circuit breaker per dependency, with a listener that logs and counts
state changes (an alarm watches ``BreakerOpened``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pybreaker
from aws_lambda_powertools.metrics import MetricUnit

from chatmemory.config import BreakerSettings
from chatmemory.errors import TurnConflict
from chatmemory.observability import logger, metrics

T = TypeVar("T")


class ConcurrentCircuitBreaker(pybreaker.CircuitBreaker):
    """pybreaker's breaker, without one call at a time.

    ``pybreaker.CircuitBreaker.call`` holds the breaker's lock for the whole guarded call, so
    threads sharing a breaker (the local stack's handler threads, a handed-off turn, a memory
    update) make their calls one after the other: under load every DynamoDB call queues behind
    the others. Here a closed breaker only takes the lock to read its state and to count the
    outcome; the call itself runs unlocked. Open and half-open are pybreaker's own: an open
    breaker fails fast, and the half-open trial call runs under the lock, alone.
    """

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._lock:
            state = self.state
            if state.name != pybreaker.STATE_CLOSED:
                return state.call(func, *args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            with self._lock:
                self.state._handle_error(exc)  # counts it (maybe opening), then re-raises
            raise
        with self._lock:
            self.state._handle_success()
        return result


class _StateListener(pybreaker.CircuitBreakerListener):
    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = old_state.name if old_state else None
        logger.warning("breaker state change", extra={"breaker": cb.name, "from": old, "to": new_state.name})
        # e.g. RedisBreakerOpen, DynamodbBreakerHalfOpen; BreakerOpened sums the openings for alarms.
        state = new_state.name.replace("-", " ").title().replace(" ", "")
        metrics.add_metric(name=f"{str(cb.name).title()}Breaker{state}", unit=MetricUnit.Count, value=1)
        if new_state.name == pybreaker.STATE_OPEN:
            metrics.add_metric(name="BreakerOpened", unit=MetricUnit.Count, value=1)


@dataclass(frozen=True)
class Breakers:
    redis: pybreaker.CircuitBreaker
    dynamodb: pybreaker.CircuitBreaker
    outbox: pybreaker.CircuitBreaker  # SQS, where turns wait while DynamoDB is unavailable
    embeddings: pybreaker.CircuitBreaker  # the embedding model: retrieval falls back to keywords
    # The vector index's SearchVectors: a missing or misconfigured index turns cross-session
    # retrieval off, never the turn store (whose breaker would leave replies unstored).
    vectors: pybreaker.CircuitBreaker

    @classmethod
    def from_settings(cls, settings: BreakerSettings) -> Breakers:
        def make(name: str) -> pybreaker.CircuitBreaker:
            return ConcurrentCircuitBreaker(
                fail_max=settings.fail_max,
                reset_timeout=settings.reset_timeout_seconds,
                exclude=[TurnConflict],  # a taken turn number is an answer, not a fault
                listeners=[_StateListener()],
                name=name,
            )

        return cls(
            redis=make("redis"),
            dynamodb=make("dynamodb"),
            outbox=make("outbox"),
            embeddings=make("embeddings"),
            vectors=make("vectors"),
        )
