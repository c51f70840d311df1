"""Waiting on events, never on the clock.

A test waits for the state it needs (a stored item, a drained queue, a breaker ready to probe)
and goes on the moment it holds; the deadline is only there to fail loudly, and is generous
enough for a busy 2-core machine, so how long anything takes never decides a test."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pybreaker

T = TypeVar("T")

DEADLINE = 60.0  # seconds; a healthy run returns long before


def wait_until(condition: Callable[[], T], what: str, timeout: float = DEADLINE, interval: float = 0.02) -> T:
    """``condition()``'s first truthy value; an AssertionError naming ``what`` (and the last
    value seen) if none comes within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {value!r})")
        time.sleep(interval)


def probes_now(breaker: pybreaker.CircuitBreaker) -> bool:
    """The breaker's next call goes through: it is not open, or its reset timeout has run out
    since it opened (pybreaker's own test, on its own clock)."""
    if breaker.current_state != pybreaker.STATE_OPEN:
        return True
    opened = breaker._state_storage.opened_at  # no public accessor; what CircuitOpenState reads
    return opened is None or datetime.now(UTC) >= opened + timedelta(seconds=breaker.reset_timeout)


def wait_for_probes(*breakers: pybreaker.CircuitBreaker) -> None:
    """Until every open one of ``breakers`` lets its next call probe the dependency."""
    for breaker in breakers:
        wait_until(lambda b=breaker: probes_now(b), f"the {breaker.name} breaker ready to probe")


def run_out_reset_timeouts(*breakers: pybreaker.CircuitBreaker) -> None:
    """The reset timeout of every open one of ``breakers`` runs out now, as a step of the test:
    the moment it opened moves back by that timeout (all pybreaker compares). With a reset
    timeout longer than any test, "while it is open" is then a state the test ends, not a
    window of wall-clock time a busy machine can outlive."""
    for breaker in breakers:
        storage = breaker._state_storage
        if breaker.current_state == pybreaker.STATE_OPEN and storage.opened_at is not None:
            storage.opened_at = storage.opened_at - timedelta(seconds=breaker.reset_timeout)
