"""The right to erasure (``deleteMyData``), erased sessions staying erased for other tabs, and
idempotent messages (``clientMessageId`` retries, a hand-off delivered twice), through the
template's handlers on moto DynamoDB and real Redis."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
import redis
from boto3.dynamodb.conditions import Key
from chatmemory.config import Settings
from chatmemory.llm.anthropic_model import build_chat_model
from chatmemory.llm.base import ChatModel, Prompt, ReplyStream
from chatmemory.services import Services, redis_client, use_services
from chatmemory.storage.keys import user_memory_key

from local.events import message_event
from local.lambda_runtime import invoke
from local.template import load_template
from tests.integration.test_data_rights import cached_keys, remember, session_of, settle, stored_items
from tests.support.cached import keys_with_data
from tests.support.frames import DOMAIN, STAGE, frames_sent, history_turns, reply_text
from tests.support.gateway import Client
from tests.support.waiting import wait_until

TRANSACTIONS = "the memory update is a TransactWriteItems, which dynalite lacks"


class CountingModel:
    """The real (offline) model, counting the replies it is asked for per user message (the
    memory worker's tasks, a title say, are not replies)."""

    def __init__(self, model: ChatModel) -> None:
        self._model = model
        self._lock = threading.Lock()
        self.asked: list[str] = []

    def stream(self, prompt: Prompt) -> AbstractContextManager[ReplyStream]:
        content = prompt.messages[-1]["content"] if prompt.messages else ""
        with self._lock:
            if "<memory-task>" not in prompt.system:
                self.asked.append(content if isinstance(content, str) else json.dumps(content))
        return self._model.stream(prompt)

    def calls_for(self, message: str) -> int:
        return sum(message in asked for asked in self.asked)


@pytest.fixture
def counted(aws: Any, settings: Settings) -> Iterator[tuple[Services, CountingModel]]:
    model = CountingModel(build_chat_model(settings.llm, None))
    built = Services(settings, aws, redis_client(settings), model)
    use_services(built)
    yield built, model
    use_services(None)


def all_items(aws: Any) -> list[dict[str, Any]]:
    table = aws.Table("ChatSessions")
    items: list[dict[str, Any]] = []
    scan: dict[str, Any] = {"ConsistentRead": True}
    while True:
        page = table.scan(**scan)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def quota_counter(item: dict[str, Any]) -> bool:
    """A quota counter of ``chatmemory.quotas``: a count and its window, nothing else."""
    if not str(item["session_id"]).startswith("quota#"):
        return False
    assert set(item) == {"session_id", "turn_number", "quota_count", "window_end", "ttl"}, item
    return True


def turns_of(aws: Any, session_id: str) -> list[dict[str, Any]]:
    return [i for i in stored_items(aws, session_id) if int(i["turn_number"]) > 0]


def put_user_memory(aws: Any, redis_url: str, principal: str) -> None:
    """Long-term memory of a principal as it is laid out: items in its own partition of
    ChatSessions and one Redis key."""
    table = aws.Table("ChatSessions")
    for number, text in ((0, f"{principal} likes tea"), (1, f"{principal} lives in Lisbon")):
        table.put_item(Item={"session_id": f"user#{principal}", "turn_number": number, "facts": text})
    redis.Redis.from_url(redis_url).set(user_memory_key(principal), f"{principal} likes tea")


# ---- deleteMyData ---------------------------------------------------------------------------


@pytest.mark.moto_only(TRANSACTIONS)
def test_delete_my_data_erases_every_session_and_the_long_term_memory_of_the_principal_only(
    services: Services, aws: Any, redis_url: str
) -> None:
    cache = redis.Redis.from_url(redis_url)
    ada = Client("mine-1", principal="guest:ada")
    ada.connect()
    first = session_of(ada)
    ada.say("My name is Ada")
    ada.say("I like tea")
    remember(services, first, through=2)  # a summary and facts: the meta item, and in Redis
    services.memory.load(first)  # the turn window cached
    (second_frame,) = ada.send({"action": "newSession"})
    second = second_frame["sessionId"]
    ada.say("A second conversation")
    other_tab = Client("mine-2", principal="guest:ada")
    other_tab.connect()
    third = session_of(other_tab)
    other_tab.say("From another tab")
    put_user_memory(aws, redis_url, "guest:ada")

    eve = Client("theirs-1", principal="guest:eve")
    eve.connect()
    eves = session_of(eve)
    eve.say("My name is Eve")
    eve.say("I like coffee")
    remember(services, eves, through=2)
    services.memory.load(eves)
    put_user_memory(aws, redis_url, "guest:eve")
    settle(services)
    eve_items = sorted(stored_items(aws, eves), key=str)
    eve_keys = sorted(cached_keys(redis_url, eves)) + keys_with_data(cache, "user:{guest:eve}*")
    assert len(eve_keys) == 4  # turns, memory state, retrieval corpus, long-term memory

    deleted, fresh = ada.send({"action": "deleteMyData"})

    assert deleted["type"] == "deleted" and deleted["scope"] == "principal"
    assert deleted["sessionId"] == second and deleted["sessions"] == 3
    # 2 turns + meta, 1 + meta, 1 + meta (each listed) and the 2 long-term memory items
    assert deleted["items"] == 3 + 2 + 2 + 2
    assert fresh["type"] == "session" and fresh["resumed"] is False and fresh["history"] == []
    assert fresh["sessionId"] not in (first, second, third)

    # Read straight from DynamoDB and Redis: nothing of Ada's is left...
    left = all_items(aws)
    assert not [i for i in left if i.get("principal") == "guest:ada"]
    assert not [i for i in left if str(i["session_id"]) in (first, second, third, "user#guest:ada")]
    # what is left is Eve's, and the erased sessions' tombstones: an id and an expiry, nothing else
    tombstones = [i for i in left if str(i["session_id"]).startswith("erased#")]
    assert {str(i["session_id"]) for i in tombstones} == {f"erased#{s}" for s in (first, second, third)}
    assert all(set(i) == {"session_id", "turn_number", "ttl"} for i in tombstones)
    # and the quota counters, left on purpose (erasing them would reset the quota)
    assert {str(i["session_id"]) for i in left if not quota_counter(i)} - {
        str(i["session_id"]) for i in tombstones
    } == {
        eves,
        "user#guest:eve",
    }
    for session_id in (first, second, third):
        assert cached_keys(redis_url, session_id) == []
    assert keys_with_data(cache, "user:{guest:ada}*") == []
    # ...and Eve's data is untouched.
    assert sorted(stored_items(aws, eves), key=str) == eve_items
    assert (
        sorted(cached_keys(redis_url, eves)) + sorted(keys_with_data(cache, "user:{guest:eve}*")) == eve_keys
    )
    assert (
        len(
            aws.Table("ChatSessions").query(KeyConditionExpression=Key("session_id").eq("user#guest:eve"))[
                "Items"
            ]
        )
        == 2
    )

    # The connection goes on in its fresh session; the erased ones cannot be resumed.
    assert ada.say("Who am I?")[-1]["turn"] == 1
    for n, session_id in enumerate((first, second, third)):
        again = Client(f"mine-again-{n}", principal="guest:ada")
        again.connect(session_id=session_id)
        assert session_of(again) != session_id


def test_delete_my_data_is_refused_to_a_connection_without_an_identity(services: Services, aws: Any) -> None:
    someone = Client("anon-1")  # no authorizer: the shared "anonymous" principal
    someone.connect()
    session_id = session_of(someone)
    someone.say("hello")
    other = Client("anon-2")
    other.connect()
    other.say("mine too")

    (frame,) = someone.send({"action": "deleteMyData"})

    assert frame["type"] == "error" and frame["code"] == "forbidden"
    assert len(turns_of(aws, session_id)) == 1 and len(turns_of(aws, session_of(other))) == 1


def test_delete_my_data_leaves_a_session_bound_here_but_owned_by_someone_else(
    services: Services, aws: Any
) -> None:
    from chatmemory.storage.bindings import Binding

    owner = Client("own-9", principal="guest:ada")
    owner.connect()
    session_id = session_of(owner)
    owner.say("Ada's secret")
    intruder = Client("int-9", principal="guest:eve")
    intruder.connect()
    intruder.say("Eve's own message")
    eves = session_of(intruder)
    services.registry.bind(
        Binding(connection_id="int-9", session_id=session_id, principal="guest:eve", connected_at=0)
    )

    deleted, _ = intruder.send({"action": "deleteMyData"})

    assert deleted["sessions"] == 1  # Eve's own session only
    assert [i["user_message"] for i in turns_of(aws, session_id)] == ["Ada's secret"]
    assert turns_of(aws, eves) == []
    assert owner.say("still mine?")[-1]["turn"] == 2  # and no tombstone on Ada's session


# ---- another tab on an erased session ------------------------------------------------------


@pytest.mark.parametrize("action", ["deleteSession", "deleteMyData"])
def test_another_tab_on_an_erased_session_continues_in_a_fresh_one(
    services: Services, aws: Any, redis_url: str, action: str
) -> None:
    tab1 = Client("tab-1", principal="guest:ada")
    tab1.connect()
    session_id = session_of(tab1)
    tab1.say("My name is Ada")
    tab2 = Client("tab-2", principal="guest:ada")
    tab2.connect(session_id=session_id)
    assert session_of(tab2) == session_id

    tab1.send({"action": action})
    assert stored_items(aws, session_id) == []

    frames = tab2.say("Do you remember me?")

    # tab 2 is told it is in a new session, then answered there, as a first turn
    assert frames[0]["type"] == "session" and frames[0]["sessionId"] != session_id
    assert frames[0]["resumed"] is False and frames[0]["history"] == []
    assert frames[-1]["type"] == "done" and frames[-1]["turn"] == 1
    assert history_turns(frames) == 0
    # the erased session stays erased, and the turn is in the new one
    assert stored_items(aws, session_id) == [] and cached_keys(redis_url, session_id) == []
    assert [i["user_message"] for i in turns_of(aws, frames[0]["sessionId"])] == ["Do you remember me?"]
    assert session_of(tab2) == frames[0]["sessionId"]


# ---- clientMessageId: retries -------------------------------------------------------------


def send_message(client: Client, message: str, client_message_id: str) -> list[dict[str, Any]]:
    return client.send({"action": "sendMessage", "message": message, "clientMessageId": client_message_id})


def test_a_retry_after_the_answer_gets_the_same_answer_and_no_second_turn_or_model_call(
    counted: tuple[Services, CountingModel], aws: Any
) -> None:
    services, model = counted
    client = Client("retry-1", principal="guest:ada")
    client.connect()
    session_id = session_of(client)
    first = send_message(client, "Recommend a manga", "m-1")
    settle(services)

    again = send_message(client, "Recommend a manga", "m-1")
    # and from another connection of the same person (a reload), too
    reloaded = Client("retry-2", principal="guest:ada")
    reloaded.connect(session_id=session_id)
    third = send_message(reloaded, "Recommend a manga", "m-1")

    for replay in (again, third):
        assert reply_text(replay) == reply_text(first) != ""
        assert replay[-1]["type"] == "done" and replay[-1]["turn"] == 1 and replay[-1]["replayed"] is True
        assert replay[-1]["usage"]["outputTokens"] == first[-1]["usage"]["outputTokens"]
    (item,) = turns_of(aws, session_id)
    assert item["user_message"] == "Recommend a manga" and item["client_message_id"] == "m-1"
    assert model.calls_for("Recommend a manga") == 1
    # a new id is a new message
    assert send_message(client, "Recommend a manga", "m-2")[-1]["turn"] == 2


def test_a_retry_while_the_first_is_still_streaming_is_told_so_then_gets_the_answer(
    counted: tuple[Services, CountingModel], aws: Any
) -> None:
    _, model = counted
    message = "Tell me a story [offline:slow=0.05]"
    first = Client("stream-1", principal="guest:ada")
    first.connect()
    session_id = session_of(first)
    worker = threading.Thread(target=send_message, args=(first, message, "m-slow"))
    worker.start()
    # streaming: the turn is taken, and the model is still answering
    wait_until(lambda: any(f["type"] == "delta" for f in frames_sent("stream-1")), "the first delta")
    second = Client("stream-2", principal="guest:ada")
    second.connect(session_id=session_id)

    (busy,) = send_message(second, message, "m-slow")

    assert busy["type"] == "error" and busy["code"] == "busy"
    worker.join(timeout=30)
    answered = [f for f in frames_sent("stream-1") if f["type"] in ("delta", "done")]
    assert answered[-1]["type"] == "done"
    replay = send_message(second, message, "m-slow")
    assert reply_text(replay) == reply_text(answered) and replay[-1]["replayed"] is True
    (item,) = turns_of(aws, session_id)
    assert item["status"] == "complete"
    assert model.calls_for("Tell me a story") == 1


def test_concurrent_copies_of_one_message_take_one_turn(
    counted: tuple[Services, CountingModel], aws: Any
) -> None:
    _, model = counted
    clients = [Client(f"copy-{i}", principal="guest:ada") for i in range(4)]
    clients[0].connect()
    session_id = session_of(clients[0])
    clients[0].say("first turn")
    for client in clients[1:]:
        client.connect(session_id=session_id)
    barrier = threading.Barrier(len(clients))
    results: dict[int, list[dict[str, Any]]] = {}

    def send(i: int) -> None:
        barrier.wait()
        results[i] = send_message(clients[i], "the same message", "m-same")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    turns = turns_of(aws, session_id)
    assert [int(t["turn_number"]) for t in turns] == [1, 2]
    assert turns[1]["user_message"] == "the same message"
    assert model.calls_for("the same message") == 1
    for frames in results.values():  # each copy: the answer, or busy while it was being written
        assert frames[-1]["type"] == "done" or frames[-1]["code"] == "busy", frames


def test_a_failed_turn_is_not_answered_again_by_a_retry(
    counted: tuple[Services, CountingModel], aws: Any
) -> None:
    _, model = counted
    client = Client("fail-1", principal="guest:ada")
    client.connect()
    session_id = session_of(client)
    assert send_message(client, "hi [offline:429]", "m-429")[-1]["code"] == "llm_unavailable"

    (frame,) = send_message(client, "hi [offline:429]", "m-429")

    assert (
        frame["type"] == "error" and frame["code"] == "llm_unavailable" and "new message" in frame["message"]
    )
    assert len(turns_of(aws, session_id)) == 1 and model.calls_for("hi [offline:429]") == 1


# ---- the hand-off delivered twice ------------------------------------------------------------


@pytest.mark.parametrize("concurrently", [False, True])
def test_a_hand_off_delivered_twice_is_one_turn_and_one_model_call(
    counted: tuple[Services, CountingModel], aws: Any, concurrently: bool
) -> None:
    _, model = counted
    client = Client("twice-1", principal="guest:ada")
    client.connect()
    session_id = session_of(client)
    route = load_template().routes()["sendMessage"]
    # no clientMessageId: the frame's API Gateway messageId is what identifies it
    event = message_event(
        "twice-1",
        "sendMessage",
        json.dumps({"action": "sendMessage", "message": "delivered twice"}),
        domain_name=DOMAIN,
        stage=STAGE,
    )
    before = len(frames_sent("twice-1"))

    def deliver() -> None:
        invoke(route, {"handoff": event})

    if concurrently:
        threads = [threading.Thread(target=deliver) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    else:
        deliver()
        deliver()

    (item,) = turns_of(aws, session_id)
    assert item["user_message"] == "delivered twice" and item["status"] == "complete"
    assert item["message_id"] == event["requestContext"]["messageId"]
    assert model.calls_for("delivered twice") == 1
    frames = frames_sent("twice-1")[before:]
    assert [f["type"] for f in frames].count("done") == 1
    assert not [f for f in frames if f["type"] == "error" and f["code"] != "busy"]
    # the same text in a new frame is a new message
    assert client.say("delivered twice")[-1]["turn"] == 2


def test_a_retry_of_a_message_whose_answer_was_lost_is_not_answered_again(aws: Any, redis_url: str) -> None:
    """The first answer's Lambda stopped mid-reply (the turn stays pending): within the turn
    timeout a retry is told it is still being answered; after it, that the answer failed."""
    from chatmemory.errors import InProgress, NotAnsweredTwice
    from chatmemory.storage.bindings import Binding

    from tests.conftest import make_settings
    from tests.integration.test_store_and_cache import NOW, FakeClock

    settings = make_settings(redis_url, memory={"turn_timeout_seconds": 60})
    clock = FakeClock(NOW)
    model = CountingModel(build_chat_model(settings.llm, None))
    services = Services(settings, aws, redis_client(settings), model, clock=clock)
    services.memory.begin_turn("s-lost", "guest:ada", "answer me", "m-lost")  # and then it died
    conversation = services.conversation("https://abc123def4.execute-api.us-east-1.amazonaws.com/prod")
    binding = Binding(
        connection_id="c-lost", session_id="s-lost", principal="guest:ada", connected_at=int(NOW)
    )

    clock.now = NOW + 59
    with pytest.raises(InProgress):
        conversation.send_message(binding, "answer me", "m-lost")
    clock.now = NOW + 60
    with pytest.raises(NotAnsweredTwice):
        conversation.send_message(binding, "answer me", "m-lost")

    assert [int(t["turn_number"]) for t in turns_of(aws, "s-lost")] == [1] and model.asked == []
    # a new message is answered, as the next turn
    conversation.send_message(binding, "answer me", "m-new")
    assert [t["status"] for t in turns_of(aws, "s-lost")] == ["pending", "complete"]
