"""Cross-session retrieval over a real WebSocket with ``python -m local`` (moto with the
template's vector index, SearchVectors answered by ``local.vector_search``): a guest who opted
in tells something in one chat, opens a new one with their token, asks about it, and the turn
comes back from the first chat; another guest, asking the same, gets nothing of it."""

from __future__ import annotations

import json
from typing import Any

import boto3
from boto3.dynamodb.conditions import Attr, Key

from tests.e2e.conftest import Stack
from tests.e2e.test_stack_conversation import open_socket, receive, reply, session_of, turn
from tests.support.waiting import wait_until

SECRET = "The code for the garden shed is 7319 and the key hides under the blue flowerpot."
QUESTION = "What is the code for my garden shed?"


def indexed_turns(stack: Stack, session_id: str) -> list[int]:
    """The session's turns in the vector index: stored with their owner and float vector."""
    table = boto3.resource("dynamodb", endpoint_url=stack.dynamodb_url, region_name="us-east-1").Table(
        "ChatSessions"
    )
    items = table.query(
        KeyConditionExpression=Key("session_id").eq(session_id),
        FilterExpression=Attr("owner").exists() & Attr("fvec").exists(),
        ConsistentRead=True,
    )["Items"]
    return sorted(int(i["turn_number"]) for i in items)  # type: ignore[arg-type]


def wait_indexed(stack: Stack, session_id: str, turn_number: int) -> list[int]:
    """The worker indexes a turn after its reply, off the hot path: the stored turn carrying
    its owner is the event waited for."""

    def with_it() -> list[int]:
        found = indexed_turns(stack, session_id)
        return found if turn_number in found else []

    return wait_until(with_it, f"turn {turn_number} of {session_id} indexed")


def send(ws: Any, body: dict[str, Any]) -> dict[str, Any]:
    ws.send(json.dumps(body))
    return receive(ws)


def test_an_opted_in_guest_gets_an_earlier_chat_back_and_another_guest_does_not(stack: Stack) -> None:
    with open_socket(stack) as ws:
        first = session_of(ws)
        token = first["guestToken"]
        assert send(ws, {"action": "setMemory", "longTerm": True})["longTerm"] is True
        assert turn(ws, SECRET)[-1]["type"] == "done"
        assert turn(ws, "Which bread flour works best for a sourdough starter?")[-1]["type"] == "done"
        assert 1 in wait_indexed(stack, first["sessionId"], 1)

    with open_socket(stack, token=token) as ws:  # the same guest, a new chat
        again = session_of(ws)
        assert again["sessionId"] != first["sessionId"] and again["history"] == []
        done = turn(ws, QUESTION)[-1]

        assert done["type"] == "done" and done["crossSession"] == "hybrid"
        assert {"sessionId": first["sessionId"], "turn": 1} in done["crossSessionTurns"]
        assert done["retrievedTurns"] == []
        budget = done["usage"]["budget"]
        assert budget["retrieved"] > 0
        assert sum(v for k, v in budget.items() if k not in ("limit", "historyTurns")) <= budget["limit"]

    with open_socket(stack) as other:  # another guest, opted in too, asking the same
        assert send(other, {"action": "setMemory", "longTerm": True})["longTerm"] is True
        frames = turn(other, QUESTION)
        frames += turn(other, SECRET.replace("7319", "what"))  # her words, word for word

        for done in (f for f in frames if f["type"] == "done"):
            assert all(t["sessionId"] != first["sessionId"] for t in done["crossSessionTurns"])
        assert first["sessionId"] not in json.dumps(frames)
        assert "7319" not in reply(frames)
