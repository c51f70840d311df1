"""TurnStore and SessionMetaStore on two DynamoDB engines (moto, and dynalite, which rejects
what the service rejects) and TurnCache on real Redis, one behaviour at a time."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from botocore.exceptions import ClientError
from chatmemory.errors import Busy, TurnConflict
from chatmemory.memory.scheduler import ThreadScheduler
from chatmemory.memory.state import Fact, MemoryState
from chatmemory.services import Services
from chatmemory.storage.keys import turns_key
from chatmemory.storage.session_meta import SessionMetaStore
from chatmemory.storage.turn_cache import TurnCache
from chatmemory.storage.turns import TurnStore
from chatmemory.turns import Turn, Usage

from tests.conftest import fresh_dynalite_tables
from tests.support.processes import DynaliteProcess

NOW = int(time.time())


def turn(n: int, session: str = "s-1", expires_at: int = NOW + 3600, status: str = "complete") -> Turn:
    return Turn(
        session_id=session,
        turn=n,
        user=f"u{n}",
        assistant=f"a{n}",
        status=status,
        at=NOW,
        expires_at=expires_at,
    )


def test_a_taken_turn_number_is_a_conflict_and_nothing_is_overwritten(aws: Any) -> None:
    store = TurnStore(aws.Table("ChatSessions"))
    store.put_user_message(turn(1).model_copy(update={"user": "original"}))

    with pytest.raises(TurnConflict):
        store.put_user_message(turn(1).model_copy(update={"user": "intruder"}))

    (kept,) = store.latest_turns("s-1", 10, NOW)
    assert kept.user == "original"


def test_expired_items_are_invisible_before_dynamodb_deletes_them(aws: Any) -> None:
    store = TurnStore(aws.Table("ChatSessions"))
    store.put_user_message(turn(1, expires_at=NOW - 10))
    store.put_user_message(turn(2, expires_at=NOW - 1))
    store.put_user_message(turn(3, expires_at=NOW + 100))

    assert [t.turn for t in store.latest_turns("s-1", 10, NOW)] == [3]


def test_latest_turns_is_the_last_n_in_order(aws: Any) -> None:
    store = TurnStore(aws.Table("ChatSessions"))
    for n in range(1, 8):
        store.put_user_message(turn(n))
    store.finish_turn("s-1", 7, "reply 7", "complete", Usage(input_tokens=5, output_tokens=6), NOW + 3600)

    window = store.latest_turns("s-1", 3, NOW)
    assert [t.turn for t in window] == [5, 6, 7]
    assert window[-1].assistant == "reply 7" and window[-1].output_tokens == 6


def test_paging_back_reaches_every_turn_and_before_the_first_is_an_empty_page(aws: Any) -> None:
    store = TurnStore(aws.Table("ChatSessions"))
    for n in range(1, 6):
        store.put_user_message(turn(n))

    assert [t.turn for t in store.turns_before("s-1", 6, 3)] == [5, 4, 3]
    assert [t.turn for t in store.turns_before("s-1", 3, 3)] == [2, 1]
    # Given the protocol's smallest ``before``: nothing is below turn 1, and no request is made
    # (DynamoDB rejects the key condition ``BETWEEN 1 AND 0``).
    assert store.turns_before("s-1", 1, 3) == []
    assert store.turns_before("no-such-session", 1, 3) == []


def test_every_read_of_the_store_is_a_request_dynamodb_accepts(aws: Any) -> None:
    """Each query and projection the store builds, on both engines (dynalite validates key
    conditions, projections, reserved words and filters as the service does)."""
    store, meta_store = TurnStore(aws.Table("ChatSessions")), SessionMetaStore(aws.Table("ChatSessions"))
    store.put_user_message(turn(1).model_copy(update={"principal": "guest:ada", "client_message_id": "c-1"}))
    store.put_turn(turn(2).model_copy(update={"principal": "guest:ada"}), outbox_id="o-2")
    meta_store.set_strategy("s-1", "window", NOW + 3600)

    assert store.last_turn_number("s-1") == 2 and store.newest_answered_turn("s-1") == 2
    assert store.extend_expiry("s-1", NOW + 7200, NOW) == 3  # both turns and the meta item
    assert store.oldest_live_turn("s-1", NOW) == (1, NOW + 7200)
    assert [t.turn for t in store.turns_between("s-1", 0, 2)] == [1, 2]
    turns, meta = store.session_items("s-1")
    assert [t.turn for t in turns] == [1, 2] and meta is not None and meta["strategy"] == "window"
    assert store.item_owners("s-1") == {0: None, 1: "guest:ada", 2: "guest:ada"}
    assert meta_store.memory_state("s-1").strategy == "window"
    assert store.find_outbox_turn("s-1", "o-2") == (2, True, "complete")
    assert store.find_outbox_turn("s-1", "o-9", client_message_id="c-1") == (1, False, "complete")
    assert store.find_outbox_turn("s-1", "o-9") is None
    assert store.principal_sessions("guest:ada") == {"s-1"}

    meta_store.mark_erased("s-1", NOW + 60)
    assert meta_store.is_erased("s-1", NOW) and not meta_store.is_erased("s-2", NOW)
    store.delete_items("s-1", [0, 1, 2])
    assert store.item_owners("s-1") == {}


UPDATE_BUILT = "before-parameter-build.dynamodb.UpdateItem"


def test_keeping_a_session_alive_never_brings_back_an_item_erased_meanwhile(aws: Any) -> None:
    """Given a turn deleted between the query that found it and the update of its TTL (an
    erasure running beside the memory worker), it stays deleted: the old code's unconditional
    update made it again, as an item of a key and a TTL."""
    store = TurnStore(aws.Table("ChatSessions"))
    for n in (1, 2):
        store.put_user_message(turn(n))
    client = aws.meta.client
    erased: list[int] = []

    def erase_first_before_its_update(params: dict[str, Any], **_: Any) -> None:
        if not erased:
            erased.append(int(params["Key"]["turn_number"]))
            client.meta.events.unregister(UPDATE_BUILT, erase_first_before_its_update)
            store.delete_items("s-1", erased)

    client.meta.events.register(UPDATE_BUILT, erase_first_before_its_update)
    assert store.extend_expiry("s-1", NOW + 7200, NOW) == 1
    assert sorted(store.item_owners("s-1")) == [n for n in (1, 2) if n not in erased]


class Transaction(Exception):
    """The TransactWriteItems request a client was about to send, stopped before sending."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        super().__init__("TransactWriteItems")
        self.items = items


def test_the_memory_transaction_is_made_of_requests_dynamodb_accepts(dynalite: DynaliteProcess) -> None:
    """dynalite has no TransactWriteItems: the transaction the store builds is stopped before it
    is sent, and each of its parts is sent to dynalite as the single-item request with the same
    key, expressions, names and values (an Update as UpdateItem; a ConditionCheck as an
    UpdateItem that changes nothing), so its parser and validation judge every expression."""
    dynamodb = fresh_dynalite_tables(dynalite)
    client = dynamodb.meta.client
    table = dynamodb.Table("ChatSessions")
    store, meta = TurnStore(table), SessionMetaStore(table)
    store.put_user_message(turn(1))
    store.put_user_message(turn(2))

    def stop(params: dict[str, Any], **_: Any) -> None:
        raise Transaction(params["TransactItems"])

    # The parts as the store gave them (plain values, which this client serializes for each request).
    client.meta.events.register("before-parameter-build.dynamodb.TransactWriteItems", stop)
    state = MemoryState(summary="", summary_tokens=3, facts=[Fact(key="name", value="Ada", turn=1)])
    with pytest.raises(Transaction) as stopped:
        meta.advance_memory("s-1", state.model_copy(update={"summarized_through": 2}), NOW + 3600)
    with pytest.raises(Transaction) as past_the_end:
        meta.advance_memory("s-1", state.model_copy(update={"summarized_through": 9}), NOW + 3600)

    (update, check) = stopped.value.items
    client.update_item(**update["Update"])  # the meta item's first summary: accepted and applied
    client.update_item(**check["ConditionCheck"], UpdateExpression="REMOVE never_set")  # turn 2 exists
    assert meta.memory_state("s-1").summarized_through == 2
    assert meta.memory_state("s-1").facts == state.facts
    with pytest.raises(ClientError) as older:  # the same reach again: the condition refuses it
        client.update_item(**update["Update"])
    assert older.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    with pytest.raises(ClientError) as missing:  # a turn that does not exist: the check refuses it
        beyond = past_the_end.value.items[1]["ConditionCheck"]
        client.update_item(**beyond, UpdateExpression="REMOVE never_set")
    assert missing.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert store.item_owners("s-1") == {0: None, 1: None, 2: None}  # nothing was created by a check


def test_cache_serves_contiguous_windows_only(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cache = TurnCache(client, window=3, ttl_seconds=60)
    cache.fill("s-1", [turn(1), turn(2)])
    assert [t.turn for t in cache.window("s-1", NOW) or []] == [1, 2]

    # a turn appended out of order leaves a hole: the entry is dropped, not served
    cache.append("s-1", turn(4), first_turn=False)
    assert cache.window("s-1", NOW) is None
    assert client.exists(turns_key("s-1")) == 0


def test_append_never_creates_a_partial_window(redis_url: str) -> None:
    cache = TurnCache(redis.Redis.from_url(redis_url), window=3, ttl_seconds=60)
    cache.append("s-2", turn(5, "s-2"), first_turn=False)
    assert cache.window("s-2", NOW) is None  # a miss, so DynamoDB fills the real window
    cache.append("s-3", turn(1, "s-3"), first_turn=True)
    assert [t.turn for t in cache.window("s-3", NOW) or []] == [1]


def test_cache_trims_to_the_window_and_expires(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cache = TurnCache(client, window=3, ttl_seconds=60)
    cache.append("s-4", turn(1, "s-4"), first_turn=True)
    for n in range(2, 6):
        cache.append("s-4", turn(n, "s-4"), first_turn=False)
    assert [t.turn for t in cache.window("s-4", NOW) or []] == [3, 4, 5]
    assert 0 < client.ttl(turns_key("s-4")) <= 60


def test_a_refill_read_before_an_erasure_never_caches_the_erased_turns(services: Services, aws: Any) -> None:
    """The interleaving a memory worker and deleteSession can make: the worker reads the turns
    from DynamoDB, the erasure deletes them and the cached lists, then the worker refills."""
    from chatmemory.storage.corpus import Passage
    from chatmemory.storage.keys import corpus_key

    store = TurnStore(aws.Table("ChatSessions"))
    for n in (1, 2):
        store.put_turn(turn(n, "s-erase"), outbox_id=f"o-{n}")
    read = store.latest_turns("s-erase", 10, NOW)  # the reader's read, before the erasure
    cache, corpus = services.memory.cache, services.recall._corpus  # type: ignore[union-attr]
    assert cache is not None and [t.turn for t in read] == [1, 2]

    cache.forget("s-erase")  # the erasure's Redis part: lists deleted, the state's tombstone
    cache.fill("s-erase", read)
    corpus._fill("s-erase", [Passage(t, None) for t in read])

    assert cache.window("s-erase", NOW) is None
    assert not redis.Redis.from_url(services.settings.cache.redis_url or "").exists(corpus_key("s-erase"))
    cache.fill("s-other", [t.model_copy(update={"session_id": "s-other"}) for t in read])  # not erased
    assert [t.turn for t in cache.window("s-other", NOW) or []] == [1, 2]


def test_a_stale_cache_is_detected_by_the_conditional_write(services: Services, aws: Any) -> None:
    """The cache misses the last persisted turn: the allocation conflicts, the cache is
    dropped, the history re-read, and the turn gets the next free number."""
    memory = services.memory
    first = memory.begin_turn("s-5", "p", "one", None)
    memory.finish_turn(first, "reply one", "complete", Usage())
    # another writer stores turn 2 behind the cache's back
    TurnStore(aws.Table("ChatSessions")).put_user_message(turn(2, "s-5"))

    started = memory.begin_turn("s-5", "p", "three", None)

    assert started.turn.turn == 3 and started.persisted
    assert [t.turn for t in started.history.turns] == [1, 2]


def test_a_second_tab_waits_for_the_turn_being_answered(services: Services, aws: Any) -> None:
    """Tab B sends while tab A's turn is being answered: ``busy`` (its turn's context would
    lack A's turn); once A's reply is stored, B's message is the next turn, with A's in its
    context."""
    memory = services.memory
    a = memory.begin_turn("s-6", "p", "from tab A", None)
    with pytest.raises(Busy):
        memory.begin_turn("s-6", "p", "from tab B", None)
    memory.finish_turn(a, "reply to A", "complete", Usage())
    b = memory.begin_turn("s-6", "p", "from tab B", None)
    assert (a.turn.turn, b.turn.turn) == (1, 2)
    assert [(t.turn, t.assistant) for t in b.history.turns] == [(1, "reply to A")]
    stored = TurnStore(aws.Table("ChatSessions")).latest_turns("s-6", 10, NOW)
    assert [(t.turn, t.user) for t in stored] == [(1, "from tab A"), (2, "from tab B")]


def test_a_reply_pending_past_the_turn_timeout_is_lost_not_busy(aws: Any, redis_url: str) -> None:
    from chatmemory.llm.anthropic_model import build_chat_model
    from chatmemory.services import redis_client

    from tests.conftest import make_settings

    settings = make_settings(redis_url, memory={"turn_timeout_seconds": 30})
    clock = FakeClock(NOW)
    services = Services(
        settings, aws, redis_client(settings), build_chat_model(settings.llm, None), clock=clock
    )
    services.memory.begin_turn("s-8", "p", "its Lambda timed out", None)
    clock.now = NOW + 29
    with pytest.raises(Busy):
        services.memory.begin_turn("s-8", "p", "too soon", None)
    clock.now = NOW + 30
    assert services.memory.begin_turn("s-8", "p", "later", None).turn.turn == 2


def test_concurrent_writers_get_distinct_turns_or_busy(services: Services, aws: Any) -> None:
    """Six tabs send at the same moment: each gets its own turn number or ``busy``; nothing
    is overwritten and the stored turns have no hole."""
    barrier = threading.Barrier(6)
    outcomes: list[int | str] = []

    def send(i: int) -> None:
        barrier.wait()
        try:
            outcomes.append(services.memory.begin_turn("s-7", "p", f"tab {i}", None).turn.turn)
        except Busy:
            outcomes.append("busy")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    numbers = sorted(o for o in outcomes if isinstance(o, int))
    stored = TurnStore(aws.Table("ChatSessions")).latest_turns("s-7", 10, NOW)
    assert numbers == list(range(1, len(numbers) + 1))
    assert [t.turn for t in stored] == numbers
    assert len({t.user for t in stored}) == len(stored)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_active_session_keeps_its_oldest_turns_past_the_ttl(aws: Any, redis_url: str) -> None:
    """TTL 60 s: turns at t=0, 40, 80 and 120. Without sliding, turn 1 would have expired at
    t=60 although the session was never idle for 60 s."""
    from chatmemory.llm.anthropic_model import build_chat_model
    from chatmemory.services import redis_client

    from tests.conftest import make_settings

    settings = make_settings(redis_url, memory={"session_ttl_seconds": 60})
    clock = FakeClock(NOW)
    services = Services(
        settings, aws, redis_client(settings), build_chat_model(settings.llm, None), clock=clock
    )
    conversation = services.conversation("https://abc123def4.execute-api.us-east-1.amazonaws.com/prod")
    from chatmemory.storage.bindings import Binding

    binding = Binding(connection_id="c-ttl", session_id="s-ttl", principal="p", connected_at=int(NOW))
    for t in (0, 40, 80, 120):
        clock.now = NOW + t
        conversation.send_message(binding, f"at {t}", None)
        assert isinstance(services.scheduler, ThreadScheduler)
        services.scheduler.drain()  # the memory worker keeps the turns alive, after the reply

    clock.now = NOW + 150
    history = services.memory.load("s-ttl")
    assert [t.user for t in history.turns] == ["at 0", "at 40", "at 80", "at 120"]

    # and once the session is idle for a whole TTL, it is gone
    clock.now = NOW + 120 + 61 + 60
    assert services.memory.load("s-ttl").turns == []


def expiring_services(aws: Any, redis_url: str, clock: FakeClock, **scheduler: Any) -> Services:
    from chatmemory.llm.anthropic_model import build_chat_model
    from chatmemory.services import redis_client

    from tests.conftest import make_settings

    settings = make_settings(redis_url, memory={"session_ttl_seconds": 600})
    model = build_chat_model(settings.llm, None)
    return Services(settings, aws, redis_client(settings), model, clock=clock, **scheduler)


def test_the_session_is_kept_alive_not_only_its_window(aws: Any, redis_url: str) -> None:
    """TTL 600 s: turns 1-20 at t=0, 21-60 at t=290. At t=310 every turn a turn loads (the
    newest 30 at most) has 580 s left, but turns 1-20 only 290: the session must be kept alive
    by its oldest turn, not its loaded window's, or turns 1-20 vanish at t=600 from a session
    in use."""
    from chatmemory.storage.bindings import Binding

    clock = FakeClock(NOW)
    services = expiring_services(aws, redis_url, clock)
    conversation = services.conversation("https://abc123def4.execute-api.us-east-1.amazonaws.com/prod")
    binding = Binding(connection_id="c-old", session_id="s-old", principal="p", connected_at=NOW)
    assert isinstance(services.scheduler, ThreadScheduler)
    for n in range(1, 62):
        clock.now = NOW + (0 if n <= 20 else 290 if n <= 60 else 310)
        conversation.send_message(binding, f"turn {n}", None)
        services.scheduler.drain()

    clock.now = NOW + 700
    store = TurnStore(aws.Table("ChatSessions"))
    assert [t.turn for t in store.turns_between("s-old", 1, 61) if t.expires_at > clock.now] == list(
        range(1, 62)
    )


class WriteCounter:
    """The DynamoDB writes a client sends (each request once, retries included)."""

    WRITES = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")

    def __init__(self, aws: Any) -> None:
        self.writes: list[str] = []
        aws.meta.client.meta.events.register("before-call.dynamodb.*", self._seen)

    def _seen(self, model: Any, **_: Any) -> None:
        if model.name in self.WRITES:
            self.writes.append(model.name)


class Later:
    """A scheduler that keeps what it is asked: the worker's own writes are not the turn's."""

    def __init__(self, updater: Any) -> None:
        self.asked: list[str] = []

    def schedule(self, session_id: str) -> None:
        self.asked.append(session_id)


def test_a_long_sessions_turn_writes_no_more_than_a_short_ones(aws: Any, redis_url: str) -> None:
    """Both sessions' turns are past half their TTL: keeping them alive is the memory worker's
    work, after the reply, not a write per stored turn inside the user's turn."""
    from chatmemory.storage.bindings import Binding

    clock = FakeClock(NOW)
    services = expiring_services(aws, redis_url, clock, scheduler_factory=Later)
    store = TurnStore(aws.Table("ChatSessions"))
    conversation = services.conversation("https://abc123def4.execute-api.us-east-1.amazonaws.com/prod")
    counter = WriteCounter(aws)
    writes = {}
    for size in (10, 1_000):
        session = f"s-{size}"
        for n in range(1, size + 1):  # 200 s of 600 left
            old = turn(n, session, expires_at=NOW + 200).model_copy(update={"principal": f"p-{size}"})
            store.put_turn(old, outbox_id=f"o-{n}")
        binding = Binding(
            connection_id=f"c-{size}", session_id=session, principal=f"p-{size}", connected_at=NOW
        )
        counter.writes.clear()
        conversation.send_message(binding, "one more", None)
        writes[size] = list(counter.writes)

    assert writes[1_000] == writes[10], writes  # the message, its reply, the quota's counters
    assert isinstance(services.scheduler, Later) and services.scheduler.asked == ["s-10", "s-1000"]
    # and the worker's keep-alive moves every turn of the long session, the new one included
    assert services.memory.keep_alive("s-1000", 0) == (1, NOW + 600)
    live = [t for t in store.turns_between("s-1000", 1, 1_001) if t.expires_at > NOW + 300]
    assert len(live) == 1_001
