"""A conversation through the template's handlers, on moto DynamoDB and real Redis."""

from __future__ import annotations

import json
from typing import Any

from boto3.dynamodb.conditions import Key
from chatmemory.services import Services
from chatmemory.storage.keys import turns_key

from tests.support.frames import history_turns, reply_text
from tests.support.gateway import Client


def stored_turns(aws: Any, session_id: str) -> list[dict[str, Any]]:
    table = aws.Table("ChatSessions")
    return table.query(KeyConditionExpression=Key("session_id").eq(session_id))["Items"]


def session_of(client: Client) -> str:
    (frame,) = [f for f in client.send({"action": "getSession"}) if f["type"] == "session"]
    return str(frame["sessionId"])


def test_a_turn_streams_deltas_then_done_and_is_stored(services: Services, aws: Any) -> None:
    # Given a connected client
    client = Client("conn-1")
    assert client.connect() == {"statusCode": 200}
    session_id = session_of(client)

    # When it sends a message
    frames = client.say("Recommend dark fantasy manga for beginners")

    # Then the reply streams as several deltas and ends with done
    kinds = [f["type"] for f in frames]
    assert kinds[-1] == "done" and kinds.count("delta") >= 2
    assert set(kinds[:-1]) == {"delta"}
    done = frames[-1]
    assert done["turn"] == 1 and done["memoryMode"] == "full" and done["truncated"] is False
    assert done["usage"]["inputTokens"] > 0 and done["usage"]["outputTokens"] > 0
    assert history_turns(frames) == 0

    # And the turn is stored with the reply and the model's usage
    (item,) = stored_turns(aws, session_id)
    assert item["user_message"] == "Recommend dark fantasy manga for beginners"
    assert item["assistant_reply"] == reply_text(frames)
    assert item["status"] == "complete"
    assert int(item["input_tokens"]) == done["usage"]["inputTokens"]


def test_the_next_turn_sees_the_previous_one(services: Services, aws: Any) -> None:
    client = Client("conn-2")
    client.connect()
    client.say("Recommend dark fantasy manga for beginners")

    frames = client.say("What about the second one?")

    # the prompt carried the first turn, both sides, as the model counted them
    assert history_turns(frames) == 1
    assert frames[-1]["usage"]["budget"]["history"] > 0
    assert frames[-1]["turn"] == 2


def test_history_comes_back_to_a_reloaded_page(services: Services, aws: Any) -> None:
    first = Client("conn-3")
    first.connect()
    session_id = session_of(first)
    first.say("My name is Ada")
    first.say("I like tea")
    first.disconnect()

    # A new connection resuming the session gets the turns back
    again = Client("conn-4")
    again.connect(session_id=session_id)
    (frame,) = again.send({"action": "getSession"})
    assert frame["type"] == "session" and frame["sessionId"] == session_id and frame["resumed"] is True
    assert [t["user"] for t in frame["history"]] == ["My name is Ada", "I like tea"]
    assert all(t["assistant"] for t in frame["history"])


def test_unknown_session_ids_start_a_fresh_session(services: Services) -> None:
    client = Client("conn-5")
    client.connect(session_id="1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed")
    (frame,) = client.send({"action": "getSession"})
    assert frame["resumed"] is False
    assert frame["sessionId"] != "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"


def test_write_through_keeps_the_cache_window(services: Services, aws: Any, redis_url: str) -> None:
    client = Client("conn-6")
    client.connect()
    session_id = session_of(client)
    for i in range(12):
        client.say(f"message {i}")

    assert services.redis is not None
    cached = [json.loads(c)["turn"] for c in services.redis.lrange(turns_key(session_id), 0, -1)]
    # every turn written through, in order, trimmed by LTRIM to what a strategy may use
    assert cached == list(range(1, 13))[-services.settings.memory.context_turns :]
    ttl = services.redis.ttl(turns_key(session_id))
    assert 0 < ttl <= 3600
    # and the 13th turn's context holds the latest turns (hybrid keeps what no summary covers yet)
    assert history_turns(client.say("and now?")) >= 2
