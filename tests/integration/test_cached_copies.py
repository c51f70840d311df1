"""The rule for cached copies (``chatmemory.storage.cached_copy``), under the interleavings that broke
it: a reader that missed the cache reads DynamoDB, and before it refills Redis a writer changes
the item and caches its own copy. The interleaving is forced, not hoped for: the real store's
read is wrapped so that the write runs between the reader's read and its refill, on real Redis
and moto."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
import redis
from chatmemory.llm.anthropic_model import build_chat_model
from chatmemory.llm.base import ChatModel, Prompt, ReplyStream
from chatmemory.memory.state import MemoryState
from chatmemory.memory.tasks import SUMMARY_TASK
from chatmemory.services import Services, redis_client, use_services
from chatmemory.storage.bindings import binding_key
from chatmemory.storage.cached_copy import VersionedCopies
from chatmemory.storage.keys import state_key, turns_key
from chatmemory.storage.user_memory import user_key
from chatmemory.turns import Turn
from pydantic import BaseModel

from tests.conftest import make_settings
from tests.integration.test_memory_controls import (
    FILLER,
    MEMORY,
    TRANSACTIONS,
    only,
    session_of,
    settle,
    talk,
)
from tests.support.cached import is_tombstone
from tests.support.gateway import Client


class Item(BaseModel):
    text: str


class SummaryHook:
    """The offline model, which runs ``during_summary`` once, when it is asked for a summary:
    a user's change that lands while the memory worker waits for the model."""

    def __init__(self, inner: ChatModel) -> None:
        self._inner = inner
        self.during_summary: Callable[[], None] | None = None

    def stream(self, prompt: Prompt) -> AbstractContextManager[ReplyStream]:
        if SUMMARY_TASK in prompt.system and self.during_summary is not None:
            hook, self.during_summary = self.during_summary, None
            hook()
        return self._inner.stream(prompt)


@pytest.fixture
def model() -> SummaryHook:
    return SummaryHook(build_chat_model(make_settings(None).llm, None))


@pytest.fixture
def services(aws: Any, redis_url: str, model: SummaryHook) -> Iterator[Services]:
    settings = make_settings(redis_url, memory=MEMORY)
    built = Services(settings, aws, redis_client(settings), model)
    use_services(built)
    yield built
    use_services(None)


def interleave(target: Any, name: str, write: Callable[[], None]) -> None:
    """Wrap ``target.name`` (a read of DynamoDB) so that its first call reads, then lets
    ``write`` run (whose own reads pass through), then returns what it read."""
    read = getattr(target, name)
    state = {"pending": True}

    def read_then_write(*args: Any) -> Any:
        value = read(*args)
        if state["pending"]:
            state["pending"] = False
            write()
        return value

    setattr(target, name, read_then_write)


# ---- the rule itself, on real Redis -----------------------------------------------------------


def test_a_copy_is_replaced_only_by_a_newer_version(redis_url: str) -> None:
    client = redis_client(make_settings(redis_url))
    assert client is not None
    copies = VersionedCopies(client, Item, ttl_seconds=60)

    assert copies.put("k", 5, Item(text="five")) is True
    assert copies.put("k", 4, Item(text="four")) is False  # a refill that read before the write
    assert copies.put("k", 5, Item(text="again")) is False  # as new is not newer
    assert copies.get("k") is not None and copies.get("k").value == Item(text="five")  # type: ignore[union-attr]

    assert copies.put("k", 9, None) is True  # erased: a tombstone, no content
    assert is_tombstone(client, "k") and client.ttl("k") > 0
    assert copies.put("k", 6, Item(text="six")) is False
    copy = copies.get("k")
    assert copy is not None and copy.version == 9 and copy.value is None


def test_an_unparsable_copy_is_a_miss_and_is_dropped(redis_url: str) -> None:
    client = redis_client(make_settings(redis_url))
    assert client is not None
    copies = VersionedCopies(client, Item, ttl_seconds=60)
    for raw in (b"plain text", b"7|{not json", b"x|{}", b'3|{"other": 1}'):
        client.set("k", raw)
        assert copies.get("k") is None and not client.exists("k")
    assert copies.put("k", 1, Item(text="one")) is True  # and it fills again


# ---- the races that broke it ------------------------------------------------------------------


def test_a_refill_read_before_a_fact_is_forgotten_cannot_bring_it_back(services: Services) -> None:
    assert services.redis is not None
    ada = Client("cc-1", principal="guest:ada")
    ada.connect()
    ada.send({"action": "setMemory", "longTerm": True})
    talk(ada, services, "My name is Ada Lovelace.", "I prefer green tea.", *FILLER)
    users = services.user_memory
    assert "Ada Lovelace" in str(users.read_stored("guest:ada").facts)
    services.redis.delete(user_key("guest:ada"))  # the copy expired: the next reader refills

    forgotten: list[bool] = []
    interleave(users.store, "get", lambda: forgotten.append(users.forget_fact("guest:ada", "name")[1]))
    ada.send({"action": "newSession"})
    ada.say("Hello")  # its read of DynamoDB came before the erasure

    assert forgotten == [True]
    cached = users.read("guest:ada")
    assert cached is not None and "Ada Lovelace" not in str(cached.facts)
    assert [f.key for f in cached.facts] == [f.key for f in users.read_stored("guest:ada").facts]
    ada.send({"action": "newSession"})
    ada.say("Hello again")
    (frame,) = [f for f in ada.send({"action": "getUserMemory"}) if f["type"] == "userMemory"]
    assert "name" not in [f["key"] for f in frame["facts"]]


def test_a_refill_read_before_set_memory_cannot_revert_the_strategy(services: Services) -> None:
    assert services.redis is not None
    ada = Client("cc-2", principal="guest:ada")
    ada.connect()
    session_id = session_of(ada)["sessionId"]
    talk(ada, services, "one", "two")
    services.redis.delete(state_key(session_id))  # the copy expired

    def change() -> None:
        frame = only(ada.send({"action": "setMemory", "memoryStrategy": "token_budget"}), "memory")
        assert frame["memoryStrategy"] == "token_budget"

    interleave(services.memory_state.store, "memory_state", change)
    assert services.memory_state.get(session_id) is not None  # the reader: it read "hybrid"

    copy = VersionedCopies(services.redis, MemoryState, 60).get(state_key(session_id))
    assert copy is not None and copy.value is not None and copy.value.strategy == "token_budget"
    assert ada.say("three")[-1]["memoryStrategy"] == "token_budget"


@pytest.mark.moto_only(TRANSACTIONS)
def test_a_summary_written_while_the_strategy_changes_keeps_the_new_strategy(
    services: Services, model: SummaryHook
) -> None:
    ada = Client("cc-3", principal="guest:ada")
    ada.connect()
    session_id = session_of(ada)["sessionId"]
    model.during_summary = lambda: services.memory_state.set_strategy(session_id, "token_budget")

    talk(ada, services, "My name is Ada.", *FILLER)  # turn 4 schedules the first summary
    settle(services)

    assert model.during_summary is None  # the summary ran, and the change landed during it
    state = services.memory_state.get(session_id)
    assert state is not None and state.summary and state.strategy == "token_budget"
    assert ada.say("Next")[-1]["memoryStrategy"] == "token_budget"
    assert session_of(ada)["memoryStrategy"] == "token_budget"


# ---- copies that do not parse, and a copy Redis failed to replace -----------------------------


def test_a_cached_turn_that_does_not_parse_is_a_miss(services: Services) -> None:
    assert services.redis is not None
    ada = Client("cc-4", principal="guest:ada")
    ada.connect()
    session_id = session_of(ada)["sessionId"]
    talk(ada, services, "one", "two")
    services.redis.lset(turns_key(session_id), 0, b'{"shape": "of another release"}')

    frames = ada.say("three")

    assert frames[-1]["type"] == "done" and frames[-1]["turn"] == 3, frames
    assert all(Turn.model_validate_json(e) for e in services.redis.lrange(turns_key(session_id), 0, -1))


def test_a_cached_binding_that_does_not_parse_is_a_miss(services: Services) -> None:
    assert services.redis is not None
    ada = Client("cc-5", principal="guest:ada")
    ada.connect()
    session_id = session_of(ada)["sessionId"]
    services.redis.set(binding_key("cc-5"), b"not a binding")

    assert session_of(ada)["sessionId"] == session_id
    assert ada.say("still here")[-1]["type"] == "done"


class SetHiccup:
    """A real Redis client whose next SET of a connection's binding times out: a hiccup, the
    server still up (the commands after it go through)."""

    def __init__(self, client: Any) -> None:
        self._client, self.armed = client, False

    def set(self, key: str, *args: Any, **kwargs: Any) -> Any:
        if self.armed and key.startswith("conn:"):
            self.armed = False
            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        return self._client.set(key, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_new_chat_is_not_sent_to_the_old_one_when_redis_missed_its_binding(
    aws: Any, redis_url: str, model: SummaryHook
) -> None:
    settings = make_settings(redis_url, memory=MEMORY)
    client = SetHiccup(redis_client(settings))
    services = Services(settings, aws, client, model)  # type: ignore[arg-type]
    use_services(services)
    try:
        ada = Client("cc-6", principal="guest:ada")
        ada.connect()
        old = session_of(ada)["sessionId"]
        ada.say("in the old chat")

        client.armed = True
        fresh = only(ada.send({"action": "newSession"}), "session")["sessionId"]

        assert client.armed is False and fresh != old  # the hiccup happened, on that write
        assert session_of(ada)["sessionId"] == fresh
        assert ada.say("in the new chat")[-1]["turn"] == 1  # the new chat's first turn
        assert [t["user"] for t in session_of(ada)["history"]] == ["in the new chat"]
    finally:
        use_services(None)


class AppendFails:
    """A real Redis client whose next write-through of a finished turn (the MULTI with RPUSHX)
    fails: the turn is stored in DynamoDB, and Redis keeps the window without it."""

    def __init__(self, client: Any) -> None:
        self._client, self.armed = client, False

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self._client.pipeline(*args, **kwargs)
        if not self.armed:
            return pipe
        owner = self

        class Failing:
            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: Any) -> None:
                pipe.reset()

            def __getattr__(self, name: str) -> Any:
                return getattr(pipe, name)

            def execute(self) -> Any:
                if owner.armed and any(b"RPUSHX" in str(c[0]).encode() for c in pipe.command_stack):
                    owner.armed = False
                    raise redis.exceptions.TimeoutError("Timeout reading from socket")
                return pipe.execute()

        return Failing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class Elsewhere:
    """A scheduler whose updates run in another process (here: not at all)."""

    def __init__(self, updater: Any) -> None:
        pass

    def schedule(self, session_id: str) -> None:
        pass


def test_a_window_redis_missed_a_turn_of_is_not_shown_by_another_process(
    aws: Any, redis_url: str, model: SummaryHook
) -> None:
    """Two Lambda instances on one Redis: the first stores a turn, and its write-through fails;
    the second, reopening the page, must not show the history without it."""
    settings = make_settings(redis_url, memory=MEMORY)
    failing = AppendFails(redis_client(settings))
    # The memory worker is another function on AWS: not a later call of the writer's process.
    writer = Services(settings, aws, failing, model, scheduler_factory=Elsewhere)  # type: ignore[arg-type]
    reader = Services(settings, aws, redis_client(settings), model)
    endpoint = "https://abc123def4.execute-api.us-east-1.amazonaws.com/prod"
    use_services(writer)
    try:
        ada = Client("cc-7", principal="guest:ada")
        ada.connect()
        session_id = session_of(ada)["sessionId"]
        ada.say("one")
        failing.armed = True
        ada.say("two")  # stored; Redis still holds the window of turn 1 only
        assert failing.armed is False
    finally:
        use_services(None)

    frame = reader.sessions(endpoint).send_session("cc-7")

    assert frame["sessionId"] == session_id
    assert [t["user"] for t in frame["history"]] == ["one", "two"]
