"""A real conversation over a real WebSocket with ``python -m local``: moto DynamoDB behind the
fault proxy, the real Redis, the offline model, the template's handlers."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from websockets.sync.client import ClientConnection, connect

from tests.e2e.conftest import Stack
from tests.support.waiting import wait_until

# Generous: a busy 2-core machine may take seconds per frame; a healthy run never waits it out.
TIMEOUT = 60.0


def open_socket(stack: Stack, session_id: str | None = None, token: str | None = None) -> ClientConnection:
    query = urlencode({k: v for k, v in (("session_id", session_id), ("token", token)) if v})
    return connect(stack.ws_url + (f"?{query}" if query else ""), open_timeout=TIMEOUT)


def receive(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(ws.recv(timeout=TIMEOUT))
    return frame


def session_of(ws: ClientConnection) -> dict[str, Any]:
    ws.send(json.dumps({"action": "getSession"}))
    frame = receive(ws)
    assert frame["type"] == "session", frame
    return frame


def turn(ws: ClientConnection, message: str) -> list[dict[str, Any]]:
    """Send a message; the frames of its answer, up to ``done`` (or an ``error``)."""
    ws.send(json.dumps({"action": "sendMessage", "message": message}))
    frames = [receive(ws)]
    while frames[-1]["type"] not in ("done", "error"):
        frames.append(receive(ws))
    return frames


def reply(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "delta")


def test_a_conversation_streams_and_remembers(stack: Stack) -> None:
    with open_socket(stack) as ws:
        session = session_of(ws)
        assert session["resumed"] is False and session["history"] == []

        first = turn(ws, "Recommend dark fantasy manga for beginners")
        second = turn(ws, "What about the second one?")

    for frames in (first, second):
        assert [f["type"] for f in frames[:-1]] == ["delta"] * (len(frames) - 1) and len(frames) >= 2
        assert frames[-1]["type"] == "done" and frames[-1]["memoryMode"] == "full"
    assert (first[-1]["turn"], second[-1]["turn"]) == (1, 2)
    assert first[-1]["usage"]["budget"]["historyTurns"] == 0
    assert second[-1]["usage"]["budget"]["historyTurns"] == 1  # the first turn, both sides
    assert second[-1]["usage"]["budget"]["history"] > 0


def test_frames_that_are_not_requests_get_errors(stack: Stack) -> None:
    with open_socket(stack) as ws:
        ws.send("this is not JSON")
        not_json = receive(ws)
        ws.send(json.dumps({"action": "dance"}))
        unknown = receive(ws)

    assert not_json["type"] == "error" and not_json["code"] == "bad_request"
    assert unknown["type"] == "error" and unknown["code"] == "unknown_action"
    assert not_json["requestId"] and unknown["requestId"]


def test_a_new_connection_resumes_the_session(stack: Stack) -> None:
    with open_socket(stack) as ws:
        first = session_of(ws)
        session_id, guest_token = first["sessionId"], first["guestToken"]
        turn(ws, "My name is Ada")

    with open_socket(stack, session_id, guest_token) as ws:
        session = session_of(ws)
        answer = turn(ws, "What is my name?")

    assert session["sessionId"] == session_id and session["resumed"] is True
    assert [t["user"] for t in session["history"]] == ["My name is Ada"]
    assert answer[-1]["usage"]["budget"]["historyTurns"] == 1  # the first turn came with the prompt


def test_a_stalled_table_degrades_to_the_cache_then_recovers(stack: Stack) -> None:
    with open_socket(stack) as ws:
        session_of(ws)
        assert turn(ws, "My name is Ada")[-1]["memoryMode"] == "full"

        stack.faults(dynamodb="stall")
        try:
            degraded = [turn(ws, f"question {i}") for i in range(2)]
        finally:
            stack.faults(dynamodb="pass")

        for frames in degraded:
            notices = [f for f in frames if f["type"] == "notice"]
            assert notices and notices[0]["code"] == "memory_degraded", frames
            assert frames[-1]["memoryMode"] == "cache_only"
            assert frames[-1]["usage"]["budget"]["historyTurns"] >= 1  # the cache still holds the first turn

        # The breaker retries DynamoDB after its reset timeout (1 s here): full memory returns.
        answer = wait_until(
            lambda: (frames := turn(ws, "Are you back?"))[-1]["memoryMode"] == "full" and frames,
            "full memory again",
            interval=0.2,
        )
        assert not [f for f in answer if f["type"] == "notice"]
        assert stack.faults() == {"dynamodb": "pass", "redis": "pass", "sqs": "pass"}


def test_a_stalled_or_dead_cache_changes_nothing_the_user_sees(stack: Stack) -> None:
    """Redis stalls (timeouts), then refuses connections: every answer is full, from DynamoDB,
    without a notice, and remembers the conversation."""
    assert "Faults:    Redis through" in stack.log()  # the handlers reach Redis through the switch
    with open_socket(stack) as ws:
        session_of(ws)
        turn(ws, "My name is Ada")
        answers = []
        for mode in ("stall", "refuse"):
            stack.faults(redis=mode)
            try:
                answers += [turn(ws, f"{mode} {i}") for i in range(2)]
            finally:
                stack.faults(redis="pass")
        answers.append(turn(ws, "and with the cache back?"))

    for frames in answers:
        assert [f["type"] for f in frames if f["type"] != "delta"] == ["done"], frames
        assert frames[-1]["memoryMode"] == "full"
        assert frames[-1]["usage"]["budget"]["historyTurns"] >= 1  # the first turn is remembered
