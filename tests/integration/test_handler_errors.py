"""Bad input and failing models, through the handlers: a clear error frame, and nothing
stored that should not be."""

from __future__ import annotations

import json
from typing import Any

import pytest
from boto3.dynamodb.conditions import Key
from chatmemory.services import Services

from tests.support.frames import history_turns, reply_text
from tests.support.gateway import Client


def connected(name: str) -> Client:
    client = Client(name)
    client.connect()
    return client


def session_items(aws: Any, client: Client) -> list[dict[str, Any]]:
    (frame,) = client.send({"action": "getSession"})
    table = aws.Table("ChatSessions")
    return table.query(KeyConditionExpression=Key("session_id").eq(frame["sessionId"]))["Items"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        (json.dumps({"action": "dance"}), "unknown_action"),
        (json.dumps({"message": "no action"}), "unknown_action"),
        (json.dumps({"action": "sendMessage"}), "bad_request"),
        (json.dumps({"action": "sendMessage", "message": 42}), "bad_request"),
        (json.dumps({"action": "sendMessage", "message": "hi", "extra": 1}), "bad_request"),
        (json.dumps({"action": "sendMessage", "message": "hi", "clientMessageId": "x" * 500}), "bad_request"),
        (json.dumps({"action": "sendMessage", "message": "   \n\t "}), "empty_message"),
        (json.dumps({"action": "sendMessage", "message": "x" * 16_001}), "message_too_large"),
    ],
)
def test_bad_frames_get_an_error_frame_and_change_nothing(
    services: Services, aws: Any, body: str, code: str
) -> None:
    client = connected("conn-bad")
    frames = client.send(body)
    assert len(frames) == 1
    (error,) = frames
    assert error["type"] == "error" and error["code"] == code
    assert error["message"].endswith(".") and error["requestId"]
    assert session_items(aws, client) == []


def test_a_model_failure_keeps_the_users_message_and_says_so(services: Services, aws: Any) -> None:
    client = connected("conn-429")
    frames = client.say("hello [offline:429]")

    assert [f["type"] for f in frames] == ["error"]
    assert frames[0]["code"] == "llm_unavailable" and "too many requests" in frames[0]["message"]
    (item,) = session_items(aws, client)
    assert item["user_message"] == "hello [offline:429]" and item["status"] == "failed"


def test_a_stream_cut_midway_is_never_stored_as_complete(services: Services, aws: Any) -> None:
    client = connected("conn-cut")
    frames = client.say("tell me a long story please, with many words in it [offline:cut]")

    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "llm_unavailable"
    partial = reply_text(frames)
    (item,) = session_items(aws, client)
    assert item["status"] == "failed"
    assert item.get("assistant_reply", "") == partial

    # the next turn does not feed the broken exchange to the model as if it were answered
    assert history_turns(client.say("are you there?")) == 0


def test_a_connection_without_a_binding_is_told_to_reconnect(services: Services) -> None:
    client = Client("never-connected")
    (frame,) = client.say("hello")
    assert frame["type"] == "error" and frame["code"] == "bad_request" and "Reconnect" in frame["message"]
