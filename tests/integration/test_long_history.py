"""A long conversation over the protocol, through the real handlers on moto and a real Redis:
20 turns of 12,000-character messages (some mostly non-ASCII) and 2,000-token replies, written
by the real conversation with a scripted model. Reopened, every turn is reachable by paging,
every turn's whole text is reachable, and no frame the server sends is over the budget."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from apigw_websocket import errors_as_frames
from chatmemory.errors import FrameTooLarge
from chatmemory.protocol import FRAME_BUDGET_BYTES, MAX_FRAME_BYTES, encode, error_frame
from chatmemory.sender import ConnectionSender
from chatmemory.services import Services, redis_client, use_services

from tests.conftest import make_settings
from tests.support.frames import frames_sent
from tests.support.gateway import Client
from tests.support.long_history import REPLY_TOKENS, long_message, long_reply
from tests.support.models import ScriptedModel

TURNS = 20
PRINCIPAL = "guest:long-history"


def assert_fits(frames: list[dict[str, Any]]) -> None:
    sizes = [len(encode(f)) for f in frames]
    assert all(size <= FRAME_BUDGET_BYTES for size in sizes), sizes


@pytest.fixture
def long_session(aws: Any, redis_url: str) -> Iterator[tuple[str, Client]]:
    """A session of ``TURNS`` long turns, written through ``sendMessage``; its id and client."""
    settings = make_settings(redis_url, memory={"strategy": "window"})
    model = ScriptedModel([(long_reply(i), REPLY_TOKENS) for i in range(1, TURNS + 1)])
    services = Services(settings, aws, redis_client(settings), model)
    use_services(services)
    writer = Client("long-writer", principal=PRINCIPAL)
    writer.connect()
    for number in range(1, TURNS + 1):
        frames = writer.say(long_message(number))
        done = [f for f in frames if f["type"] == "done"]
        assert done and done[0]["turn"] == number, frames
    (session,) = [f for f in writer.send({"action": "getSession"}) if f["type"] == "session"]
    assert_fits(frames_sent(writer.connection_id))  # the deltas and everything else too
    yield str(session["sessionId"]), writer
    use_services(None)


def whole_turn(client: Client, number: int) -> tuple[str, str | None]:
    frames = client.send({"action": "getSession", "turn": number})
    assert_fits(frames)
    assert [f["type"] for f in frames] == ["turn"] * len(frames)
    assert [f["part"] for f in frames] == list(range(1, len(frames) + 1))
    assert {f["parts"] for f in frames} == {len(frames)} and {f["turn"] for f in frames} == {number}
    replies = [f["assistant"] for f in frames]
    return "".join(f["user"] for f in frames), None if None in replies else "".join(replies)


def test_a_long_session_reopens_and_pages_back_to_its_first_turn(long_session: tuple[str, Client]) -> None:
    session_id, _ = long_session
    # Given a page reloaded on the session (a new connection, the same principal)
    reader = Client("long-reader", principal=PRINCIPAL)
    reader.connect(session_id)

    # When it asks for the session, then pages back until there is nothing older
    (latest,) = reader.send({"action": "getSession"})
    pages = [latest]
    while pages[-1]["hasMore"]:
        oldest = pages[-1]["history"][0]["turn"]
        (page,) = reader.send({"action": "getSession", "before": oldest})
        assert page["type"] == "session" and page["before"] == oldest
        pages.append(page)

    # Then the session is resumed, the newest turn comes first, and every frame fits
    assert latest["type"] == "session" and latest["sessionId"] == session_id and latest["resumed"] is True
    assert latest["history"][-1]["turn"] == TURNS
    assert_fits(pages)
    # And every turn is reached exactly once, in order
    shown = [entry for page in reversed(pages) for entry in page["history"]]
    assert [entry["turn"] for entry in shown] == list(range(1, TURNS + 1))
    assert pages[-1]["hasMore"] is False
    # And what is shown is the text itself, or its beginning marked as truncated
    truncated = [entry for entry in shown if entry.get("truncated")]
    assert truncated, "some of these turns are larger than a frame"
    for entry in shown:
        message, reply = long_message(entry["turn"]), long_reply(entry["turn"])
        if entry.get("truncated"):
            assert message.startswith(entry["user"]) and reply.startswith(entry["assistant"])
            full = {"user": message, "assistant": reply}
            assert entry["truncated"] == [name for name in ("user", "assistant") if entry[name] != full[name]]
            assert entry["truncated"]
        else:
            assert (entry["user"], entry["assistant"]) == (message, reply)

    # And the whole text of a truncated turn (any turn) is reachable in parts
    for entry in truncated:
        assert whole_turn(reader, entry["turn"]) == (long_message(entry["turn"]), long_reply(entry["turn"]))
    assert whole_turn(reader, 1) == (long_message(1), long_reply(1))
    assert_fits(frames_sent(reader.connection_id))


def test_the_export_of_a_long_session_is_complete_and_every_frame_fits(
    long_session: tuple[str, Client],
) -> None:
    session_id, writer = long_session
    frames = writer.send({"action": "exportSession"})
    assert_fits(frames)
    assert [f["part"] for f in frames] == list(range(1, len(frames) + 1)) and len(frames) > 1
    document = json.loads("".join(f["data"] for f in frames))
    assert document["sessionId"] == session_id
    assert [t["turn"] for t in document["turns"]] == list(range(1, TURNS + 1))
    assert [(t["user"], t["assistant"]) for t in document["turns"]] == [
        (long_message(i), long_reply(i)) for i in range(1, TURNS + 1)
    ]
    assert_fits(writer.send({"action": "getUserMemory"}))


def test_a_turn_the_session_does_not_have_is_refused_in_words(long_session: tuple[str, Client]) -> None:
    _, writer = long_session
    (missing,) = writer.send({"action": "getSession", "turn": TURNS + 1})
    assert missing["type"] == "error" and missing["code"] == "bad_request"
    assert f"no turn {TURNS + 1}" in missing["message"]
    (both,) = writer.send({"action": "getSession", "turn": 1, "before": 2})
    assert both["type"] == "error" and both["code"] == "bad_request"


def test_someone_elses_turn_is_forbidden(long_session: tuple[str, Client]) -> None:
    session_id, _ = long_session
    # A connection of another principal cannot be bound to the session by connecting, so it
    # is bound the way a stale binding would be: by the registry.
    from chatmemory.services import get_services
    from chatmemory.storage.bindings import Binding

    get_services().registry.bind(
        Binding(connection_id="intruder", session_id=session_id, principal="guest:other", connected_at=0)
    )
    intruder = Client("intruder", principal="guest:other")
    (frame,) = intruder.send({"action": "getSession", "turn": 1})
    assert frame["type"] == "error" and frame["code"] == "forbidden"


def test_a_frame_over_the_limit_is_never_posted_and_the_user_reads_why(aws: Any, endpoint: str) -> None:
    import boto3

    client = boto3.client("apigatewaymanagementapi", endpoint_url=endpoint, region_name="us-east-1")
    sender = ConnectionSender(client)
    huge = {"type": "session", "history": [{"user": "x" * MAX_FRAME_BYTES}]}
    with pytest.raises(FrameTooLarge):
        sender.send("big-1", huge)
    assert frames_sent("big-1") == []

    with errors_as_frames(sender, "big-1", "req-1"):
        sender.send("big-1", huge)
    (error,) = frames_sent("big-1")
    assert error == error_frame(FrameTooLarge(0), "req-1")
    assert error["code"] == "internal" and "too large" in error["message"]


def test_has_more_is_false_when_only_expired_turns_are_older(services: Services) -> None:
    import time

    from chatmemory.turns import Turn, Usage

    # Given a session whose first three turns have expired (DynamoDB deletes them up to two
    # days late) and whose last three are live
    client = Client("expired-1", principal=PRINCIPAL)
    client.connect()
    (fresh,) = [f for f in client.send({"action": "getSession"}) if f["type"] == "session"]
    session_id, now, store = str(fresh["sessionId"]), int(time.time()), services.memory.store
    assert fresh["history"] == [] and fresh["hasMore"] is False
    for number in range(1, 7):
        expires_at = now - 100 + number if number <= 3 else now + 86_400 + number
        turn = Turn(
            session_id=session_id, turn=number, user=f"message {number}", at=now, expires_at=expires_at
        )
        store.put_user_message(turn.model_copy(update={"principal": PRINCIPAL}))
        store.finish_turn(session_id, number, f"reply {number}", "complete", Usage(), expires_at, 0)

    # When the session is shown, and paged back from its oldest live turn
    (latest,) = client.send({"action": "getSession"})
    (older,) = client.send({"action": "getSession", "before": 4})

    # Then only the live turns show, and neither frame promises more
    assert [t["turn"] for t in latest["history"]] == [4, 5, 6] and latest["hasMore"] is False
    assert older["history"] == [] and older["hasMore"] is False
