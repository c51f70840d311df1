"""Data rights over a real WebSocket with ``python -m local``: a guest exports and erases their
session; another guest can do neither to it."""

from __future__ import annotations

import json
from typing import Any

import boto3
import redis
from boto3.dynamodb.conditions import Key
from chatmemory.storage.cached_copy import Copy, VersionedCopies
from chatmemory.storage.keys import corpus_key, user_memory_key
from chatmemory.storage.user_memory import UserFact, UserMemory
from websockets.sync.client import ClientConnection

from tests.e2e.conftest import E2E_REDIS_URL, Stack
from tests.e2e.test_stack_conversation import open_socket, receive, session_of, turn
from tests.support.cached import keys_with_data
from tests.support.waiting import wait_until


def stored(stack: Stack, session_id: str) -> list[dict[str, Any]]:
    table = boto3.resource("dynamodb", endpoint_url=stack.dynamodb_url, region_name="us-east-1").Table(
        "ChatSessions"
    )
    return table.query(KeyConditionExpression=Key("session_id").eq(session_id), ConsistentRead=True)["Items"]


def stored_turns(stack: Stack, session_id: str) -> list[dict[str, Any]]:
    """The session's turn items (its meta item lists it under its principal)."""
    return [item for item in stored(stack, session_id) if item["turn_number"] > 0]


def cached(session_id: str) -> list[bytes]:
    return keys_with_data(redis.Redis.from_url(E2E_REDIS_URL), f"*{session_id}*")


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

    def answered() -> dict[str, Any] | None:
        ws.send(json.dumps({"action": "deleteSession"}))
        first = receive(ws)
        return None if first["type"] == "error" and first["code"] == "internal" else first

    first: dict[str, Any] = wait_until(answered, "deleteSession answered, not internal", interval=0.2)
    return [first, receive(ws)] if first["type"] == "deleted" else [first]


def memory_caught_up(session_id: str, turns: int) -> None:
    """Until the memory updates the session's turns scheduled have run. The default strategy
    (hybrid) searches, so each turn's update embeds it, and the last thing such an update
    writes is the turn's vector, appended to the session's corpus in Redis (for a principal
    who did not opt in to long-term memory, nothing comes after). Erasing before then races
    with them; erasing after leaves them nothing to write."""
    client = redis.Redis.from_url(E2E_REDIS_URL)

    def embedded() -> bool:
        entries = [json.loads(raw) for raw in client.lrange(corpus_key(session_id), 0, -1)]
        return {int(e["turn"]["turn"]) for e in entries if e.get("vec")} >= set(range(1, turns + 1))

    wait_until(embedded, f"the {turns} turns of {session_id} embedded")


def test_a_guest_exports_then_erases_their_session(stack: Stack) -> None:
    with open_socket(stack) as ws:
        session_id = session_of(ws)["sessionId"]
        turn(ws, "My name is Ada")
        turn(ws, "I like tea")

        document = export(ws)
        assert [t["user"] for t in document["turns"]] == ["My name is Ada", "I like tea"]
        memory_caught_up(session_id, 2)

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


def test_a_guest_erases_all_their_data_and_another_guests_stays(stack: Stack) -> None:
    import jwt

    dynamodb = boto3.resource("dynamodb", endpoint_url=stack.dynamodb_url, region_name="us-east-1")
    table = dynamodb.Table("ChatSessions")
    cache = redis.Redis.from_url(E2E_REDIS_URL)
    copies = VersionedCopies(cache, UserMemory, ttl_seconds=3600)
    memory = UserMemory(facts=[UserFact(key="drink", value="likes tea", session_id="s", turn=1, at=1)])

    def guest(ws: ClientConnection) -> tuple[str, str, str]:
        frame = session_of(ws)
        token = frame["guestToken"]
        return frame["sessionId"], token, jwt.decode(token, options={"verify_signature": False})["sub"]

    def remember_about(principal: str) -> None:  # long-term memory, as it is laid out
        table.put_item(Item={"session_id": f"user#{principal}", "turn_number": 0, "facts": "likes tea"})
        copies.put(user_memory_key(principal), 1, memory)

    with open_socket(stack) as other:
        theirs, _, eve = guest(other)
        turn(other, "Eve's own words")
    remember_about(eve)

    with open_socket(stack) as ws:
        first, token, ada = guest(ws)
        turn(ws, "My name is Ada")
        ws.send(json.dumps({"action": "newSession"}))
        second = receive(ws)["sessionId"]
        turn(ws, "A second conversation")
        remember_about(ada)
        with open_socket(stack, first, token) as tab:  # another tab, on the first session
            assert session_of(tab)["sessionId"] == first
            memory_caught_up(first, 1)
            memory_caught_up(second, 1)

            ws.send(json.dumps({"action": "deleteMyData"}))
            deleted, fresh = receive(ws), receive(ws)
            assert deleted["type"] == "deleted" and deleted["scope"] == "principal", deleted
            assert deleted["sessions"] == 2 and fresh["type"] == "session" and fresh["history"] == []

            # nothing of Ada's is left in DynamoDB or Redis
            for session_id in (first, second, f"user#{ada}"):
                assert stored(stack, session_id) == [] and cached(session_id) == []
            assert not [i for i in table.scan(ConsistentRead=True)["Items"] if i.get("principal") == ada]
            assert keys_with_data(cache, f"*{ada}*") == []

            # the other tab is moved to a fresh session, not back into the erased one
            frames = turn(tab, "Still there?")
            assert frames[0]["type"] == "session" and frames[0]["sessionId"] not in (first, second)
            assert frames[-1]["turn"] == 1 and stored(stack, first) == []

    # Eve's data is untouched
    assert [i["user_message"] for i in stored_turns(stack, theirs)] == ["Eve's own words"]
    assert len(stored(stack, f"user#{eve}")) == 1 and copies.get(user_memory_key(eve)) == Copy(1, memory)
