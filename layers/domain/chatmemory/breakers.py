"""Guarded calls: one circuit breaker per dependency, which also knows which errors are that
dependency failing and hands the caller the fallback it asks for.

Every call to a store goes through its ``Guard``: ``attempt`` (the result, or a default when
the store fails), ``succeeds`` (whether a write went through) or ``require`` (the result, or
the caller's error). Timeouts are the clients' own (boto3's ``Config``, redis-py's socket
timeouts, ``chatmemory.clients``), so a dead store costs one timeout until its breaker opens.
A listener logs and counts state changes (an alarm watches ``BreakerOpened``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import pybreaker
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from chatmemory.config import BreakerSettings
from chatmemory.errors import MemoryUnavailable, TurnConflict
from chatmemory.observability import logger, metrics

T = TypeVar("T")
D = TypeVar("D")

Faults = tuple[type[Exception], ...]


class StoreFault(Exception):
    """A store misbehaving in a way its client does not raise (a write that keeps losing a
    race, say): a fault of whichever guard it is raised under."""


def aws_errors() -> Faults:
    return (ClientError, BotoCoreError)


def redis_errors() -> Faults:
    # Imported when first needed: the functions without Redis (the authorizer) never load it.
    # A cluster client's slot-map errors (RedisClusterException) are not RedisErrors.
    from redis.exceptions import RedisClusterException, RedisError

    return (RedisError, RedisClusterException)


def any_error() -> Faults:
    return (Exception,)


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


class Guard(ConcurrentCircuitBreaker):
    """A dependency's breaker that knows the dependency's faults: its client's errors and the
    open breaker refusing the call. Anything else (a bug, ``TurnConflict``) propagates."""

    def __init__(self, errors: Callable[[], Faults], **kwargs: Any) -> None:
        # Only a fault counts towards opening: a bug, or a caller's bad input raised inside a
        # guarded call (a cursor that does not decode), must not cut everyone off the store.
        kwargs["exclude"] = [*kwargs.get("exclude", ()), self._not_a_fault]
        super().__init__(**kwargs)
        self._errors = errors

    def _not_a_fault(self, exc: BaseException) -> bool:
        return not self.is_fault(exc)

    @cached_property
    def faults(self) -> Faults:
        return (*self._errors(), StoreFault, pybreaker.CircuitBreakerError)

    def is_fault(self, exc: BaseException) -> bool:
        return isinstance(exc, self.faults)

    def attempt(self, func: Callable[..., T], *args: Any, default: D, warn: str | None = None) -> T | D:
        """``func(*args)``, or ``default`` when the dependency fails (logged with ``warn``)."""
        try:
            return self.call(func, *args)
        except self.faults as exc:
            self._warn(warn, exc)
            return default

    def succeeds(self, func: Callable[..., Any], *args: Any, warn: str | None = None) -> bool:
        """Whether ``func(*args)`` went through (a failure logged with ``warn``)."""
        try:
            self.call(func, *args)
        except self.faults as exc:
            self._warn(warn, exc)
            return False
        return True

    def require(
        self,
        func: Callable[..., T],
        *args: Any,
        error: Callable[[], Exception] = MemoryUnavailable,
        warn: str | None = None,
    ) -> T:
        """``func(*args)``; when the dependency fails, ``error()`` is raised from the fault."""
        try:
            return self.call(func, *args)
        except self.faults as exc:
            self._warn(warn, exc)
            raise error() from exc

    @staticmethod
    def _warn(message: str | None, exc: BaseException) -> None:
        if message:
            logger.warning(message, extra={"error": type(exc).__name__})


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
    redis: Guard
    dynamodb: Guard
    outbox: Guard  # SQS, where turns wait while DynamoDB is unavailable
    embeddings: Guard  # the embedding model: retrieval falls back to keywords
    # The vector index's SearchVectors: a missing or misconfigured index turns cross-session
    # retrieval off, never the turn store (whose breaker would leave replies unstored).
    vectors: Guard
    # The session list (its index, the listing on the meta item): a list that cannot be kept
    # or read never stops a turn from being stored.
    listing: Guard

    @classmethod
    def from_settings(cls, settings: BreakerSettings) -> Breakers:
        def make(name: str, errors: Callable[[], Faults] = aws_errors) -> Guard:
            return Guard(
                errors,
                fail_max=settings.fail_max,
                reset_timeout=settings.reset_timeout_seconds,
                exclude=[TurnConflict],  # a taken turn number is an answer, not a fault
                listeners=[_StateListener()],
                name=name,
            )

        return cls(
            redis=make("redis", redis_errors),
            dynamodb=make("dynamodb"),
            outbox=make("outbox"),
            # Any provider's error (a local model, Bedrock, an HTTP API): keywords still answer.
            embeddings=make("embeddings", any_error),
            vectors=make("vectors"),
            listing=make("listing"),
        )
