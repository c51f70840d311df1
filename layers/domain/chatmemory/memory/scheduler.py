"""Running a memory update after a turn without the turn waiting for it.

On AWS an asynchronous invocation of the summarize function; in tests and on the local stack a
background thread of the process; in the evaluation harness right away, so it is repeatable.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, Protocol

from aws_lambda_powertools.metrics import MetricUnit

from chatmemory.observability import logger, metrics


class UpdateScheduler(Protocol):
    def schedule(self, session_id: str) -> None:
        """Ask for the session's memory to be brought up to date; never raises."""
        ...


class InlineScheduler:
    """Runs the update at once, in the caller's thread (after the turn's ``done``)."""

    def __init__(self, run: Callable[[str], None]) -> None:
        self._run = run

    def schedule(self, session_id: str) -> None:
        self._run(session_id)


class ThreadScheduler:
    """Runs each update in a daemon thread; at most one per session at a time (a request for a
    session whose update is running makes it run once more when it ends, so a turn that came
    meanwhile, say one stating a fact, is not left for a next turn that may never come)."""

    def __init__(self, run: Callable[[str], None]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when an update ends
        self._running: dict[str, threading.Thread] = {}
        self._again: set[str] = set()

    def schedule(self, session_id: str) -> None:
        with self._lock:
            if session_id in self._running:
                self._again.add(session_id)
                return
            thread = threading.Thread(
                target=self._work, args=(session_id,), daemon=True, name="memory-update"
            )
            self._running[session_id] = thread
        thread.start()

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until no update is under way, re-runs included (tests, shutdown); a
        ``TimeoutError`` if one still is after ``timeout`` (never a silent return while one
        runs: a caller reads what the updates wrote)."""
        with self._idle:
            if not self._idle.wait_for(lambda: not self._running, timeout):
                raise TimeoutError(f"memory updates still running after {timeout:g} s")

    def _work(self, session_id: str) -> None:
        done = False
        try:
            while not done:
                self._run(session_id)
                _publish_metrics()
                with self._lock:  # checked and released at once: a request cannot slip between
                    done = session_id not in self._again
                    self._again.discard(session_id)
                    if done:
                        self._running.pop(session_id, None)
                        self._idle.notify_all()
        finally:
            if not done:
                with self._lock:
                    self._running.pop(session_id, None)
                    self._again.discard(session_id)
                    self._idle.notify_all()


def _publish_metrics() -> None:
    """An update's metrics go out when it ends, as the summarize function's invocation
    publishes its own on AWS (the local runtime keeps each thread's metrics apart)."""
    if metrics.provider.metric_set:  # nothing to publish is not worth Powertools' warning
        metrics.flush_metrics()


class LambdaScheduler:
    """An asynchronous invocation (``InvocationType="Event"``) of the summarize function; Lambda
    queues it, and the sending function returns without waiting."""

    def __init__(self, client: Any, function_name: str) -> None:
        self._client = client
        self._function = function_name

    def schedule(self, session_id: str) -> None:
        try:
            self._client.invoke(
                FunctionName=self._function,
                InvocationType="Event",
                Payload=json.dumps({"sessionId": session_id}).encode(),
            )
        except Exception as exc:  # botocore's errors: the next turn asks again
            logger.warning("could not schedule a memory update", extra={"error": type(exc).__name__})
            metrics.add_metric(name="MemoryUpdateNotScheduled", unit=MetricUnit.Count, value=1)
            return
        metrics.add_metric(name="MemoryUpdateScheduled", unit=MetricUnit.Count, value=1)
