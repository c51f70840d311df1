"""Session routes and data rights through the template's handlers, on moto DynamoDB and real
Redis: newSession, getSession paging with ``before``, deleteSession and exportSession."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from boto3.dynamodb.conditions import Key
from chatmemory.memory.scheduler import ThreadScheduler
from chatmemory.memory.state import Fact, MemoryState
from chatmemory.protocol import MAX_FRAME_BYTES, encode
from chatmemory.services import Services
from chatmemory.storage.bindings import Binding
from chatmemory.storage.keys import state_key, turns_key

from tests.support.cached import keys_with_data
from tests.support.gateway import Client
from tests.support.waiting import DEADLINE

TRANSACTIONS = "the memory update is a TransactWriteItems, which dynalite lacks"


def session_of(client: Client) -> str:
    (frame,) = [f for f in client.send({"action": "getSession"}) if f["type"] == "session"]
    return str(frame["sessionId"])


def stored_items(aws: Any, session_id: str) -> list[dict[str, Any]]:
    table = aws.Table("ChatSessions")
    return table.query(KeyConditionExpression=Key("session_id").eq(session_id), ConsistentRead=True)["Items"]


def stored_turns(aws: Any, session_id: str) -> list[dict[str, Any]]:
    """The session's turn items (not its meta item, which lists it once a turn is answered)."""
    return [item for item in stored_items(aws, session_id) if item["turn_number"] > 0]


def cached_keys(redis_url: str, session_id: str) -> list[bytes]:
    """The session's keys in Redis that hold data (not an erasure's tombstone)."""
    return keys_with_data(redis.Redis.from_url(redis_url), f"*{session_id}*")


def settle(services: Services) -> None:
    """Wait for the memory updates the turns scheduled (a background thread in tests)."""
    assert isinstance(services.scheduler, ThreadScheduler)
    services.scheduler.drain(timeout=DEADLINE)  # it returns when they have run


def remember(services: Services, session_id: str, through: int) -> None:
    """A summary and facts on the session's meta item (and in Redis), as summarize writes them."""
    settle(services)
    state = MemoryState(
        summary="Ada likes tea and reads manga.",
        summary_tokens=9,
        facts=[Fact(key="name", value="Ada", turn=1), Fact(key="drink", value="tea", turn=2)],
        summarized_through=through,
    )
    assert services.memory_state.advance(session_id, state)


def export_of(frames: list[dict[str, Any]]) -> dict[str, Any]:
    parts = [f for f in frames if f["type"] == "export"]
    assert [f["part"] for f in parts] == list(range(1, len(parts) + 1))
    assert {f["parts"] for f in parts} == {len(parts)}
    return dict(json.loads("".join(f["data"] for f in parts)))


# ---- newSession ---------------------------------------------------------------------------------


def test_new_session_binds_the_connection_to_a_fresh_session(services: Services, aws: Any) -> None:
    client = Client("ns-1", principal="guest:ada")
    client.connect()
    old = session_of(client)
    client.say("My name is Ada")

    (frame,) = client.send({"action": "newSession"})

    assert frame["type"] == "session" and frame["resumed"] is False and frame["history"] == []
    assert frame["sessionId"] != old and uuid.UUID(frame["sessionId"]).version == 4
    assert session_of(client) == frame["sessionId"]
    # the next message starts the new session at turn 1; the old one keeps its turn
    assert client.say("Hello again")[-1]["turn"] == 1
    assert len(stored_turns(aws, old)) == 1 and len(stored_turns(aws, frame["sessionId"])) == 1


def test_new_session_refuses_unknown_fields(services: Services) -> None:
    client = Client("ns-2")
    client.connect()
    (frame,) = client.send({"action": "newSession", "sessionId": "mine"})
    assert frame["type"] == "error" and frame["code"] == "bad_request"


# ---- getSession paging -------------------------------------------------------------------------


def test_get_session_pages_back_with_before(services: Services) -> None:
    """Paging back from the newest page reaches every turn once, in order. A page holds at most
    ``history_turns`` (10) turns, fewer when the model's replies fill the frame first."""
    client = Client("page-1", principal="guest:ada")
    client.connect()
    session_id = session_of(client)
    for i in range(1, 26):
        client.say(f"message {i}")

    (latest,) = client.send({"action": "getSession"})
    assert latest["history"][-1]["turn"] == 25 and latest["hasMore"] is True
    pages = [latest]
    while pages[-1]["hasMore"]:
        oldest = pages[-1]["history"][0]["turn"]
        (page,) = client.send({"action": "getSession", "before": oldest})
        assert page["type"] == "session" and page["sessionId"] == session_id and page["resumed"] is True
        pages.append(page)

    assert len(pages) >= 3 and all(0 < len(p["history"]) <= 10 for p in pages)
    shown = [t for page in reversed(pages) for t in page["history"]]
    assert [t["turn"] for t in shown] == list(range(1, 26))
    assert [t["user"] for t in shown] == [f"message {i}" for i in range(1, 26)]
    assert all(t["assistant"] for t in shown)

    (none,) = client.send({"action": "getSession", "before": 1})
    assert none["history"] == [] and none["hasMore"] is False


def test_paging_past_the_first_turn_again_and_again_leaves_dynamodb_usable(services: Services) -> None:
    """``before: 1`` is allowed and asks for nothing: answered without a request DynamoDB would
    reject, so repeating it never opens the DynamoDB breaker (two faults open it here)."""
    client = Client("page-2", principal="guest:ada")
    client.connect()
    for i in range(1, 4):
        client.say(f"message {i}")

    for _ in range(3):
        (none,) = client.send({"action": "getSession", "before": 1})
        assert none["type"] == "session" and none["history"] == [] and none["hasMore"] is False

    (page,) = client.send({"action": "getSession", "before": 3})
    assert page["type"] == "session" and [t["turn"] for t in page["history"]] == [1, 2]


def test_before_must_be_a_positive_integer(services: Services) -> None:
    client = Client("page-2")
    client.connect()
    for before in (0, "3", 2.5, True):
        (frame,) = client.send({"action": "getSession", "before": before})
        assert frame["type"] == "error" and frame["code"] == "bad_request", before


# ---- deleteSession --------------------------------------------------------------------------


@pytest.mark.moto_only(TRANSACTIONS)
def test_delete_erases_the_session_everywhere_and_starts_a_new_one(
    services: Services, aws: Any, redis_url: str
) -> None:
    client = Client("del-1", principal="guest:ada")
    client.connect()
    session_id = session_of(client)
    for message in ("My name is Ada", "I like tea", "Recommend manga"):
        client.say(message)
    remember(services, session_id, through=2)
    services.memory.load(session_id)  # the turn window is cached
    assert len(stored_items(aws, session_id)) == 4  # three turns and the meta item
    keys = set(cached_keys(redis_url, session_id))
    assert {turns_key(session_id).encode(), state_key(session_id).encode()} <= keys

    deleted, fresh = client.send({"action": "deleteSession"})

    assert deleted == {"type": "deleted", "sessionId": session_id}
    assert fresh["type"] == "session" and fresh["resumed"] is False and fresh["history"] == []
    assert fresh["sessionId"] != session_id
    assert stored_items(aws, session_id) == []
    assert cached_keys(redis_url, session_id) == []
    # the connection is on the new session, whose first message is turn 1
    assert session_of(client) == fresh["sessionId"]
    assert client.say("Who am I?")[-1]["turn"] == 1
    assert stored_items(aws, session_id) == []
    # and the erased session cannot be resumed
    again = Client("del-2", principal="guest:ada")
    again.connect(session_id=session_id)
    assert session_of(again) != session_id


@pytest.mark.moto_only(TRANSACTIONS)
def test_delete_of_a_session_with_more_than_one_page_of_items(
    services: Services, aws: Any, redis_url: str
) -> None:
    client = Client("del-3", principal="guest:ada")
    client.connect()
    session_id = session_of(client)
    big = "x" * 30_000
    for _ in range(40):  # over 1 MB: the Query needs more than one page, BatchWriteItem several batches
        client.say(big[:15_000])
    settle(services)
    assert stored_items(aws, session_id)[0]["turn_number"] == 0  # summarize wrote the meta item

    client.send({"action": "deleteSession"})

    assert stored_items(aws, session_id) == []
    assert cached_keys(redis_url, session_id) == []


@pytest.mark.moto_only(TRANSACTIONS)
def test_delete_of_someone_elses_session_is_forbidden_and_erases_nothing(
    services: Services, aws: Any, redis_url: str
) -> None:
    owner = Client("own-1", principal="guest:ada")
    owner.connect()
    session_id = session_of(owner)
    owner.say("My name is Ada")
    owner.say("My password hint is tea")
    remember(services, session_id, through=2)
    services.memory.load(session_id)
    items, keys = stored_items(aws, session_id), sorted(cached_keys(redis_url, session_id))

    # A connection of another principal asking for that session does not get it...
    intruder = Client("int-1", principal="guest:eve")
    intruder.connect(session_id=session_id)
    assert session_of(intruder) != session_id
    intruder.send({"action": "deleteSession"})
    assert stored_items(aws, session_id) == items

    # ...and a binding that somehow points there is refused by the domain.
    services.registry.bind(
        Binding(connection_id="int-1", session_id=session_id, principal="guest:eve", connected_at=0)
    )
    for action in ("deleteSession", "exportSession"):
        (frame,) = intruder.send({"action": action})
        assert frame["type"] == "error" and frame["code"] == "forbidden", action
    (frame,) = intruder.send({"action": "getSession", "before": 3})
    assert frame["type"] == "error" and frame["code"] == "forbidden"

    assert stored_items(aws, session_id) == items
    assert sorted(cached_keys(redis_url, session_id)) == keys
    assert services.registry.lookup("int-1").session_id == session_id  # type: ignore[union-attr]
    # the owner still has it all
    assert [t["user"] for t in owner.send({"action": "getSession"})[0]["history"]] == [
        "My name is Ada",
        "My password hint is tea",
    ]


# ---- exportSession --------------------------------------------------------------------------


@pytest.mark.moto_only(TRANSACTIONS)
def test_export_sends_every_turn_summary_and_facts(services: Services) -> None:
    client = Client("exp-1", principal="guest:ada")
    client.connect()
    session_id = session_of(client)
    client.say("My name is Ada")
    client.say("I like tea")
    remember(services, session_id, through=2)

    frames = client.send({"action": "exportSession"})

    assert all(f["type"] == "export" and f["sessionId"] == session_id for f in frames)
    document = export_of(frames)
    assert document["sessionId"] == session_id
    assert document["summary"] == "Ada likes tea and reads manga."
    assert document["facts"] == [
        {"key": "name", "value": "Ada", "turn": 1},
        {"key": "drink", "value": "tea", "turn": 2},
    ]
    assert [(t["turn"], t["user"]) for t in document["turns"]] == [(1, "My name is Ada"), (2, "I like tea")]
    assert all(t["assistant"] and t["status"] == "complete" for t in document["turns"])


def test_export_of_an_empty_session(services: Services) -> None:
    client = Client("exp-2")
    client.connect()
    (frame,) = client.send({"action": "exportSession"})
    assert frame["part"] == 1 and frame["parts"] == 1
    document = export_of([frame])
    assert document["turns"] == [] and document["summary"] == "" and document["facts"] == []


def test_a_large_export_is_split_into_frames_under_32_kb(services: Services) -> None:
    client = Client("exp-3", principal="guest:ada")
    client.connect()
    # ~2 KB messages with characters JSON escapes and multi-byte ones
    messages = [f'turn {i} "quoted" \\ é漢字 \n' + "ab\tc" * 480 for i in range(1, 41)]
    for message in messages:
        client.say(message)
        settle(services)  # the worker between turns: under load an overlap once lost a reply write (moto)

    frames = client.send({"action": "exportSession"})

    assert len(frames) > 2
    assert all(len(encode(f)) < MAX_FRAME_BYTES for f in frames)
    document = export_of(frames)
    assert [t["turn"] for t in document["turns"]] == list(range(1, 41))
    assert [t["user"] for t in document["turns"]] == messages
    assert len(document["turns"]) > services.settings.memory.context_turns  # not just the window


@pytest.mark.moto_only(TRANSACTIONS)
def test_a_memory_update_racing_the_erasure_does_not_bring_the_session_back(
    services: Services, aws: Any, redis_url: str
) -> None:
    client = Client("race-1", principal="guest:ada")
    client.connect()
    session_id = session_of(client)
    client.say("My name is Ada")
    client.say("I like tea")
    settle(services)
    client.send({"action": "deleteSession"})

    # a summary of turns 1-2 computed before the erasure arrives after it
    late = MemoryState(summary="Ada likes tea.", summarized_through=2)
    assert services.memory_state.advance(session_id, late) is False

    assert stored_items(aws, session_id) == []
    assert cached_keys(redis_url, session_id) == []


def test_a_tab_whose_message_lands_after_the_erasure_does_not_bring_the_session_back(
    services: Services, aws: Any, redis_url: str
) -> None:
    ada = Client("late-1", principal="guest:ada")
    ada.connect()
    session_id = session_of(ada)
    for message in ("My name is Ada", "I like tea"):
        ada.say(message)
    tab = Client("late-2", principal="guest:ada")
    tab.connect(session_id=session_id)
    assert session_of(tab) == session_id

    # The tab read the history (two turns) before the erasure; its put of turn 3 lands after.
    store = services.memory.store
    put = store.put_user_message
    erased: list[list[dict[str, Any]]] = []

    def erase_first(turn: Any) -> None:
        if not erased:
            erased.append(ada.send({"action": "deleteSession"}))
        put(turn)

    store.put_user_message = erase_first  # type: ignore[method-assign]
    frames = tab.say("A message on its way")

    assert erased and erased[0][0]["type"] == "deleted"
    assert stored_items(aws, session_id) == []  # turn 3 was taken back
    assert frames[0]["type"] == "session" and frames[0]["sessionId"] != session_id  # moved on
    assert frames[-1]["type"] == "done" and frames[-1]["turn"] == 1


def test_a_guest_token_is_not_kept_once_its_session_frame_has_gone_out(
    services: Services, aws: Any, redis_url: str
) -> None:
    """A guest token is a bearer credential: the binding carries a new one from $connect to
    the session frame that hands it over, and keeps it no longer (in DynamoDB or Redis)."""
    from chatmemory.storage.bindings import binding_key

    token = "eyJhbGciOiJIUzI1NiJ9.a-new-guest-token.signature"
    sessions = services.sessions("https://abc123def4.execute-api.us-east-1.amazonaws.com/prod")
    sessions.connect("tok-1", None, "guest:ada", guest_token=token)

    frame = sessions.send_session("tok-1")

    assert frame["guestToken"] == token
    item = aws.Table("ChatConnections").get_item(Key={"connection_id": "tok-1"}, ConsistentRead=True)["Item"]
    assert token not in json.dumps(item, default=str)
    assert token.encode() not in (redis.Redis.from_url(redis_url).get(binding_key("tok-1")) or b"")
    assert "guestToken" not in sessions.send_session("tok-1")  # the page has it already
