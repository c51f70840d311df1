"""The in-process scheduler: one update per session at a time, and a request that came while
one was running is not dropped but runs once after it."""

from __future__ import annotations

import threading

import pytest
from chatmemory.memory.scheduler import ThreadScheduler


def test_a_request_while_running_runs_once_more_after_it() -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[str] = []

    def run(session_id: str) -> None:
        runs.append(session_id)
        started.set()
        release.wait(10)

    scheduler = ThreadScheduler(run)
    scheduler.schedule("s-1")
    assert started.wait(10)
    scheduler.schedule("s-1")  # the turn after: it may state a fact the running update missed
    scheduler.schedule("s-1")  # coalesced with the one before
    release.set()
    scheduler.drain()

    assert runs == ["s-1", "s-1"]


def test_a_failing_run_frees_the_session_for_the_next_request(monkeypatch: pytest.MonkeyPatch) -> None:
    raised: list[type[BaseException]] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_type))
    runs: list[str] = []

    def run(session_id: str) -> None:
        runs.append(session_id)
        if len(runs) == 1:
            raise RuntimeError("the model failed")

    scheduler = ThreadScheduler(run)
    scheduler.schedule("s-1")
    scheduler.drain()
    scheduler.schedule("s-1")
    scheduler.drain()

    assert runs == ["s-1", "s-1"]
    assert raised == [RuntimeError]
