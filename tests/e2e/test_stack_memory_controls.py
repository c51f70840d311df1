"""Memory controls over a real WebSocket with ``python -m local``: a guest opts in to long-term
memory, and their next session (a new connection with their token) starts knowing what they
said; another guest does not; erasure empties DynamoDB and Redis; a new chat with its own
strategy."""

from __future__ import annotations

import json
from typing import Any

import boto3
import redis
from boto3.dynamodb.conditions import Key
from websockets.sync.client import ClientConnection

from tests.e2e.conftest import E2E_REDIS_URL, Stack
from tests.e2e.test_stack_conversation import open_socket, receive, reply, session_of, turn
from tests.support.cached import holds_no_data
from tests.support.waiting import wait_until


def send(ws: ClientConnection, body: dict[str, Any]) -> dict[str, Any]:
    ws.send(json.dumps(body))
    return receive(ws)


def user_memory(ws: ClientConnection) -> dict[str, Any]:
    frame = send(ws, {"action": "getUserMemory"})
    assert frame["type"] == "userMemory" and frame["parts"] == 1, frame
    return frame


def kept_facts(ws: ClientConnection) -> list[dict[str, Any]]:
    """The long-term facts once there are some (the merge runs after the reply, off the hot
    path); fails if none come."""
    facts: list[dict[str, Any]] = wait_until(
        lambda: user_memory(ws)["facts"], "long-term facts", interval=0.2
    )
    return facts


def user_items(stack: Stack, principal: str) -> list[dict[str, Any]]:
    table = boto3.resource("dynamodb", endpoint_url=stack.dynamodb_url, region_name="us-east-1").Table(
        "ChatSessions"
    )
    key = Key("session_id").eq("user#" + principal)
    return table.query(KeyConditionExpression=key, ConsistentRead=True)["Items"]


def test_long_term_memory_reaches_the_guests_next_session_only(stack: Stack) -> None:
    with open_socket(stack) as ws:
        first = session_of(ws)
        token = first["guestToken"]
        assert first["memoryStrategy"] == "hybrid"
        assert send(ws, {"action": "setMemory", "longTerm": True})["longTerm"] is True
        # a three-turn chat: the session's own facts wait for turn 20, long-term memory does not
        turn(ws, "My name is Ada Lovelace.")
        for i in range(2):
            assert turn(ws, f"Tell me something about river number {i}.")[-1]["type"] == "done"
        facts = kept_facts(ws)
        assert [(f["key"], f["value"]) for f in facts] == [("name", "Ada Lovelace")]
        assert facts[0]["sessionId"] == first["sessionId"]

    with open_socket(stack, token=token) as ws:  # the same guest, a new session
        again = session_of(ws)
        assert again["sessionId"] != first["sessionId"] and again["history"] == []
        frames = turn(ws, "Hello, do you know me?")
        assert frames[-1]["usage"]["budget"]["userFacts"] > 0
        budget = frames[-1]["usage"]["budget"]
        assert sum(v for k, v in budget.items() if k != "limit") <= budget["limit"]

        with open_socket(stack) as other:  # another guest
            frames = turn(other, "Hello, do you know me?")
            assert "long-term facts" not in reply(frames)
            assert frames[-1]["usage"]["budget"]["userFacts"] == 0
            assert user_memory(other)["facts"] == []

        principal = "guest:" + _guest_id(stack, again["sessionId"])
        assert user_items(stack, principal)
        erased = send(ws, {"action": "forgetUserMemory"})
        assert erased["type"] == "userMemory" and erased["facts"] == [] and erased["longTerm"] is False
        assert user_items(stack, principal) == []
        assert holds_no_data(redis.Redis.from_url(E2E_REDIS_URL), "user:{" + principal + "}:memory")
        assert "long-term facts" not in reply(turn(ws, "And now?"))


def test_a_fact_erased_while_its_merge_may_be_pending_does_not_come_back(stack: Stack) -> None:
    with open_socket(stack) as ws:
        session_of(ws)
        assert send(ws, {"action": "setMemory", "longTerm": True})["longTerm"] is True
        turn(ws, "My name is Ada Lovelace.")
        assert kept_facts(ws)
        # a fact stated, its merge scheduled after the reply, and erased at once: pending or not
        assert turn(ws, "I prefer green tea.")[-1]["type"] == "done"
        erased = send(ws, {"action": "forgetUserMemory"})
        assert erased["type"] == "userMemory" and erased["facts"] == [] and erased["longTerm"] is False
        assert user_memory(ws)["facts"] == []

        # opting in again in the same chat does not collect what was said before the erasure
        assert send(ws, {"action": "setMemory", "longTerm": True})["longTerm"] is True
        for i in range(3):
            assert turn(ws, f"Tell me about lake number {i}.")[-1]["type"] == "done"
        assert turn(ws, "My deadline is Friday.")[-1]["type"] == "done"
        facts = kept_facts(ws)
        # The stack runs a session's memory updates one at a time, in the order they were asked
        # for (one thread per session): the merge that brought the deadline ran after the one
        # that may have been pending at the erasure. Had that one kept "green tea", while memory
        # was off or after, it would be here.
        assert [(f["key"], f["value"]) for f in facts] == [("deadline", "Friday")]


def test_a_new_chat_with_its_own_strategy(stack: Stack) -> None:
    with open_socket(stack) as ws:
        session_of(ws)
        fresh = send(ws, {"action": "newSession", "memoryStrategy": "window"})
        assert fresh["type"] == "session" and fresh["memoryStrategy"] == "window"
        assert turn(ws, "hello")[-1]["memoryStrategy"] == "window"
        bad = send(ws, {"action": "setMemory", "memoryStrategy": "all of it"})
        assert bad["type"] == "error" and bad["code"] == "bad_request"
        changed = send(ws, {"action": "setMemory", "memoryStrategy": "summary"})
        assert changed == {
            "type": "memory",
            "sessionId": fresh["sessionId"],
            "memoryStrategy": "summary",
            "longTerm": False,
        }
        assert turn(ws, "hello again")[-1]["memoryStrategy"] == "summary"


def _guest_id(stack: Stack, session_id: str) -> str:
    """The guest's id, read from the principal its turns record."""
    table = boto3.resource("dynamodb", endpoint_url=stack.dynamodb_url, region_name="us-east-1").Table(
        "ChatSessions"
    )
    items = table.query(KeyConditionExpression=Key("session_id").eq(session_id), ConsistentRead=True)["Items"]
    principal = str(next(i["principal"] for i in items if "principal" in i))
    return principal.removeprefix("guest:")
