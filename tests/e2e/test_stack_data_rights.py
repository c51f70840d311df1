"""Data rights over a real WebSocket with ``python -m local``: a guest exports and erases their
session; another guest can do neither to it."""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import redis
from boto3.dynamodb.conditions import Key
from websockets.sync.client import ClientConnection

from tests.e2e.conftest import E2E_REDIS_URL, Stack
from tests.e2e.test_stack_conversation import open_socket, receive, session_of, turn


def stored(stack: Stack, session_id: str) -> list[dict[str, Any]]:
    table = boto3.resource("dynamodb", endpoint_url=stack.dynamodb_url, region_name="us-east-1").Table(
        "ChatSessions"
    )
    return table.query(KeyConditionExpression=Key("session_id").eq(session_id), ConsistentRead=True)["Items"]


def cached(session_id: str) -> list[bytes]:
    return redis.Redis.from_url(E2E_REDIS_URL).keys(f"*{session_id}*")


def export(ws: ClientConnection) -> dict[str, Any]:
    ws.send(json.dumps({"action": "exportSession"}))
    frames = [receive(ws)]
    assert frames[0]["type"] == "export", frames[0]
    while len(frames) < frames[0]["parts"]:
        frames.append(receive(ws))
    return dict(json.loads("".join(f["data"] for f in frames)))


def delete(ws: ClientConnection) -> list[dict[str, Any]]:
    """``deleteSession`` as a client should send it: again after an ``internal`` error (a store
    was unreachable midway, e.g. a breaker still open after an earlier test's faults)."""
    for _ in range(5):
        ws.send(json.dumps({"action": "deleteSession"}))
        first = receive(ws)
        if first["type"] != "error" or first["code"] != "internal":
            break
        time.sleep(0.5)
    return [first, receive(ws)] if first["type"] == "deleted" else [first]


def test_a_guest_exports_then_erases_their_session(stack: Stack) -> None:
    with open_socket(stack) as ws:
        session_id = session_of(ws)["sessionId"]
        turn(ws, "My name is Ada")
        turn(ws, "I like tea")

        document = export(ws)
        assert [t["user"] for t in document["turns"]] == ["My name is Ada", "I like tea"]
        time.sleep(0.3)  # let a memory update the turns may have started finish

        deleted, fresh = delete(ws)
        assert deleted == {"type": "deleted", "sessionId": session_id}
        assert fresh["type"] == "session" and fresh["sessionId"] != session_id and fresh["history"] == []
        assert stored(stack, session_id) == [] and cached(session_id) == []

        assert turn(ws, "Who am I?")[-1]["turn"] == 1


def test_another_guest_can_neither_export_nor_erase_the_session(stack: Stack) -> None:
    with open_socket(stack) as ws:
        owner = session_of(ws)["sessionId"]
        turn(ws, "a secret only I should see")

    with open_socket(stack, owner) as ws:  # another guest, asking for the owner's session
        assert session_of(ws)["sessionId"] != owner
        assert "secret" not in json.dumps(export(ws))
        assert [f["type"] for f in delete(ws)] == ["deleted", "session"]

    turns = [item["user_message"] for item in stored(stack, owner) if item["turn_number"] > 0]
    assert turns == ["a secret only I should see"]
