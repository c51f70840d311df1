"""A principal's conversations through the template's handlers (listSessions, openSession,
renameSession), on moto DynamoDB and real Redis, with the offline model titling new sessions."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from chatmemory.memory.scheduler import ThreadScheduler
from chatmemory.protocol import MAX_FRAME_BYTES
from chatmemory.services import Services, redis_client, use_services
from chatmemory.storage.session_meta import SessionMetaStore
from chatmemory.storage.turns import TurnStore
from chatmemory.turns import Turn

from tests.conftest import make_settings
from tests.support.gateway import Client

TRANSACTIONS = "a session's listing is created in a TransactWriteItems, which dynalite lacks"
pytestmark = pytest.mark.moto_only(TRANSACTIONS)


@pytest.fixture
def services(aws: Any, redis_url: str) -> Iterator[Services]:
    settings = make_settings(redis_url)
    built = Services(settings, aws, redis_client(settings))
    use_services(built)
    yield built
    use_services(None)


def settle(services: Services) -> None:
    assert isinstance(services.scheduler, ThreadScheduler)
    services.scheduler.drain()


def only(frames: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (frame,) = [f for f in frames if f["type"] == kind]
    return frame


def listed(client: Client, **page: Any) -> dict[str, Any]:
    return only(client.send({"action": "listSessions", **page}), "sessions")


def three_conversations(client: Client, services: Services) -> list[str]:
    """A, B and C, one message each (oldest first); the connection is left on C."""
    ids = []
    for n, first in enumerate(("Planning a trip to Lisbon", "Sourdough starter troubles", "Learning Rust")):
        if n:
            client.send({"action": "newSession"})
        done = client.say(f"{first}, can you help?")[-1]
        assert done["type"] == "done", done
        ids.append(only(client.send({"action": "getSession"}), "session")["sessionId"])
    settle(services)
    return ids


def test_a_principal_lists_their_conversations_newest_first_titled(services: Services) -> None:
    ada = Client("sl-1", principal="guest:ada")
    ada.connect()
    a, b, c = three_conversations(ada, services)

    page = listed(ada)

    assert [s["sessionId"] for s in page["sessions"]] == [c, b, a] and page["next"] is None
    newest = page["sessions"][0]
    assert newest["current"] is True and not any(s["current"] for s in page["sessions"][1:])
    assert newest["turns"] == 1 and newest["createdAt"] <= newest["lastActiveAt"] < newest["expiresAt"]
    # Titled by the memory worker after the first exchange: the offline model's few words,
    # whatever it dressed them in (a label, quotes, bold, a final period).
    assert [s["title"] for s in page["sessions"]] == [
        "Learning rust help",
        "Sourdough starter troubles",
        "Planning trip lisbon",
    ]

    ada.send({"action": "openSession", "sessionId": a})
    assert ada.say("And what about Porto?")[-1]["type"] == "done"
    assert [s["sessionId"] for s in listed(ada)["sessions"]] == [a, c, b]  # a is the newest now
    assert listed(ada)["sessions"][0]["turns"] == 2


def test_someone_elses_conversations_are_neither_listed_nor_opened(services: Services) -> None:
    ada, bob = Client("sl-2", principal="guest:ada"), Client("sl-3", principal="guest:bob")
    ada.connect()
    bob.connect()
    (mine, *_) = three_conversations(ada, services)
    assert bob.say("hello")[-1]["type"] == "done"
    bobs = only(bob.send({"action": "getSession"}), "session")["sessionId"]

    assert [s["sessionId"] for s in listed(bob)["sessions"]] == [bobs]
    unknown = bob.send({"action": "openSession", "sessionId": "6f1c2b9e-3d4a-4f8b-9c7d-2e5a1b0c9d8e"})
    foreign = bob.send({"action": "openSession", "sessionId": mine})
    # Another principal's id answers exactly as an unknown one does.
    assert only(unknown, "error") | {"requestId": None} == only(foreign, "error") | {"requestId": None}
    assert only(foreign, "error")["code"] == "bad_request"
    assert only(bob.send({"action": "getSession"}), "session")["sessionId"] == bobs  # still on his own
    refused = bob.send({"action": "renameSession", "sessionId": mine, "title": "mine now"})
    assert only(refused, "error")["code"] == "bad_request"
    assert listed(ada)["sessions"][-1]["title"] != "mine now"


def test_opening_a_conversation_at_a_turn_sends_it_and_that_turn(services: Services) -> None:
    ada = Client("sl-4", principal="guest:ada")
    ada.connect()
    for message in ("first question", "second question", "third question"):
        assert ada.say(message)[-1]["type"] == "done"
    first = only(ada.send({"action": "getSession"}), "session")["sessionId"]
    ada.send({"action": "newSession"})

    frames = ada.send({"action": "openSession", "sessionId": first, "turn": 2})

    session = only(frames, "session")
    assert session["sessionId"] == first and session["resumed"] is True
    assert [t["turn"] for t in session["history"]] == [1, 2, 3]
    turn = only(frames, "turn")
    assert turn["turn"] == 2 and turn["user"] == "second question"
    assert ada.say("fourth")[-1]["turn"] == 4  # the connection continues that conversation


def test_renaming_keeps_the_users_title(services: Services) -> None:
    ada = Client("sl-5", principal="guest:ada")
    ada.connect()
    assert ada.say("Planning a trip to Lisbon")[-1]["type"] == "done"
    session_id = only(ada.send({"action": "getSession"}), "session")["sessionId"]

    renamed = only(ada.send({"action": "renameSession", "title": "  Lisbon, May  "}), "renamed")
    settle(services)  # the worker's title comes after: it never replaces the user's

    assert renamed == {"type": "renamed", "sessionId": session_id, "title": "Lisbon, May"}
    assert listed(ada)["sessions"][0]["title"] == "Lisbon, May"
    export = "".join(f["data"] for f in ada.send({"action": "exportSession"}) if f["type"] == "export")
    assert json.loads(export)["title"] == "Lisbon, May"


@pytest.mark.parametrize(
    "frame",
    [
        {"action": "renameSession", "title": ""},
        {"action": "renameSession", "title": "   "},
        {"action": "renameSession", "title": "two\nlines"},
        {"action": "renameSession", "title": "x" * 81},
        {"action": "renameSession", "title": 42},
        {"action": "listSessions", "limit": 0},
        {"action": "listSessions", "limit": 51},
        {"action": "listSessions", "cursor": "not-a-cursor"},
        {"action": "openSession"},
        {"action": "openSession", "sessionId": "not-a-uuid"},
        {"action": "openSession", "sessionId": "6f1c2b9e-3d4a-4f8b-9c7d-2e5a1b0c9d8e", "turn": 0},
    ],
)
def test_bad_frames_get_an_error_and_change_nothing(services: Services, frame: dict[str, Any]) -> None:
    ada = Client("sl-6", principal="guest:ada")
    ada.connect()
    assert ada.say("Planning a trip to Lisbon")[-1]["type"] == "done"
    settle(services)
    before = listed(ada)

    assert only(ada.send(frame), "error")["code"] == "bad_request"

    assert listed(ada) == before


def test_an_unanswered_first_turn_has_no_listing_to_rename(services: Services) -> None:
    ada = Client("sl-7", principal="guest:ada")
    ada.connect()
    assert only(ada.send({"action": "renameSession", "title": "Too soon"}), "error")["code"] == "bad_request"
    assert listed(ada)["sessions"] == []


# ---- the listing in the store ------------------------------------------------------------------


def turn(session_id: str, number: int, at: int, principal: str = "guest:ada") -> Turn:
    return Turn(
        session_id=session_id, turn=number, user="u", assistant="a", status="complete",
        at=at, expires_at=at + 3600, principal=principal,
    )  # fmt: skip


def test_an_erased_or_expired_session_leaves_the_list_at_once(aws: Any) -> None:
    table = aws.Table("ChatSessions")
    store, meta = TurnStore(table), SessionMetaStore(table)
    now = int(time.time())
    for session_id, at in (("s-old", now - 4000), ("s-live", now), ("s-erased", now)):
        store.put_turn(turn(session_id, 1, at), outbox_id=f"o-{session_id}")
        assert meta.record_activity(session_id, "guest:ada", 1, 1000 * at, at + 3600)

    store.delete_items("s-erased", [0, 1])  # what an erasure does to its items
    assert not meta.record_activity("s-erased", "guest:ada", 2, 1000 * now, now + 3600)  # a late note
    assert not meta.record_activity("s-erased", "guest:ada", 1, 1000 * now, now + 3600)
    assert not meta.record_activity("s-live", "guest:bob", 2, 1000 * now, now + 3600)  # not his

    listings, more = meta.list_sessions("guest:ada", now, 10)
    # s-old expired 400 s ago: gone from the list before DynamoDB's TTL deletes it.
    assert [listing.session_id for listing in listings] == ["s-live"] and more is None


def test_a_thousand_sessions_page_in_frames_under_the_limit(aws: Any, services: Services) -> None:
    """Every session once, newest activity first, over pages that each fit in a frame."""
    table = aws.Table("ChatSessions")
    now = int(time.time())
    with table.batch_writer() as batch:  # a thousand listings as record_activity leaves them
        for n in range(1000):
            batch.put_item(
                Item={
                    "session_id": f"s-{n:04}", "turn_number": 0, "listed_by": "guest:ada",
                    "last_active": 1000 * now - n, "created_at": now - n - 60, "turn_count": 1 + n % 300,
                    "title": "x" * 80,  # the longest a title may be
                    "ttl": now + 3600,
                }
            )  # fmt: skip
    ada = Client("sl-8", principal="guest:ada")
    ada.connect()
    seen: list[str] = []
    cursor: str | None = None
    while True:
        frames = ada.send({"action": "listSessions", "limit": 50} | ({"cursor": cursor} if cursor else {}))
        page = only(frames, "sessions")
        assert len(json.dumps(page).encode()) <= MAX_FRAME_BYTES
        seen += [s["sessionId"] for s in page["sessions"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [f"s-{n:04}" for n in range(1000)]
