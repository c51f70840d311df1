"""Handing a turn off: the asynchronous self-invocation's payload, and answering in place when
the handoff cannot be made."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from chatmemory import handoff
from chatmemory.config import StreamSettings

EVENT = {"requestContext": {"connectionId": "abc=", "routeKey": "sendMessage"}, "body": "{}"}


class FakeLambda:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("throttled")
        self.calls.append(kwargs)
        return {"StatusCode": 202}


def never(event: dict[str, Any]) -> None:
    raise AssertionError("not run in this process")


def test_off_answers_in_place() -> None:
    assert handoff.hand_off(StreamSettings(), EVENT, never, "us-east-1") is False


def test_lambda_invokes_itself_async_with_the_original_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeLambda()
    monkeypatch.setattr(handoff, "_client", fake)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "chat-SendMessageFunction-X1")

    assert handoff.hand_off(StreamSettings(handoff="lambda"), EVENT, never, "us-east-1") is True

    (call,) = fake.calls
    assert call["FunctionName"] == "chat-SendMessageFunction-X1" and call["InvocationType"] == "Event"
    worker_event = json.loads(call["Payload"])
    assert handoff.handed_off(worker_event) == EVENT
    assert handoff.handed_off(EVENT) is None


def test_the_worker_is_invoked_through_the_alias_the_turn_came_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The route invokes the "live" alias (SnapStart's published version, the alias's failure
    destination): the worker goes the same way, not to $LATEST."""
    fake = FakeLambda()
    monkeypatch.setattr(handoff, "_client", fake)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "chat-SendMessageFunction-X1")
    alias = "arn:aws:lambda:us-east-1:123456789012:function:chat-SendMessageFunction-X1:live"

    assert handoff.hand_off(StreamSettings(handoff="lambda"), EVENT, never, "us-east-1", alias) is True
    (call,) = fake.calls
    assert call["FunctionName"] == alias


def test_a_failed_or_impossible_handoff_is_answered_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handoff, "_client", FakeLambda(fail=True))
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "chat-SendMessageFunction-X1")
    assert handoff.hand_off(StreamSettings(handoff="lambda"), EVENT, never, "us-east-1") is False
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    assert handoff.hand_off(StreamSettings(handoff="lambda"), EVENT, never, "us-east-1") is False


def test_thread_runs_the_worker_event_elsewhere() -> None:
    seen: list[dict[str, Any]] = []
    ran = threading.Event()

    def run(event: dict[str, Any]) -> None:
        seen.append(event)
        ran.set()

    assert handoff.hand_off(StreamSettings(handoff="thread"), EVENT, run, "us-east-1") is True
    assert ran.wait(5) and seen == [{"handoff": EVENT}]
