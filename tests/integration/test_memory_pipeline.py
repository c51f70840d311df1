"""Memory strategies through the real turn pipeline: moto DynamoDB, real Redis, the offline
model through the SDK, and the updater in a background thread as on the local stack."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import pytest
from boto3.dynamodb.conditions import Key
from chatmemory.errors import ChatError, LlmUnavailable
from chatmemory.llm.anthropic_model import build_chat_model
from chatmemory.llm.base import ReplyStream
from chatmemory.memory.tasks import FACTS_TASK, SUMMARY_TASK
from chatmemory.memory.updater import MemoryUpdateGivenUp
from chatmemory.protocol import encode
from chatmemory.services import Services, redis_client
from chatmemory.storage.keys import state_key
from chatmemory.storage.turns import TurnStore
from chatmemory.turns import Turn

from tests.conftest import make_settings
from tests.support.chat import Chat
from tests.support.frames import ENDPOINT, frames_sent, history_turns

TRANSACTIONS = "the memory update is a TransactWriteItems, which dynalite lacks"

MEMORY = {"history_turns": 4, "block_turns": 3, "budget_tokens": 6_000}


@pytest.fixture
def small(aws: Any, redis_url: str) -> Iterator[Services]:
    """Services with a small window (4) and block (3): the summary moves every 3 turns from turn 7."""
    settings = make_settings(redis_url, memory=MEMORY)
    yield Services(settings, aws, redis_client(settings), build_chat_model(settings.llm, None))


def meta_items(aws: Any, session_id: str) -> list[dict[str, Any]]:
    table = aws.Table("ChatSessions")
    items = table.query(KeyConditionExpression=Key("session_id").eq(session_id))["Items"]
    return [i for i in items if int(i["turn_number"]) == 0]


@pytest.mark.moto_only(TRANSACTIONS)
def test_hybrid_summarises_off_the_hot_path_and_uses_summary_and_facts(small: Services, aws: Any) -> None:
    chat = Chat(small, "s-hybrid")
    chat.say("Hello! My name is Ada Lovelace.")
    chat.say("I prefer green tea over coffee.")
    for i in range(4):
        chat.say(f"Question number {i} about the weather.")
        chat.settle()
    assert meta_items(aws, "s-hybrid") == []  # 6 turns: no block to summarise yet

    chat.say("Question number 4 about rivers.")  # turn 7: turns 1-3 are due
    chat.settle()
    (meta,) = meta_items(aws, "s-hybrid")
    assert int(meta["summarized_through"]) == 3
    assert "Ada Lovelace" in meta["summary"]
    assert {f["key"]: f["value"] for f in meta["facts"]} == {
        "name": "Ada Lovelace",
        "preference": "green tea over coffee",
    }

    frames = chat.say("What do you remember?")
    done = frames[-1]
    assert done["usage"]["budget"]["summary"] > 0 and done["usage"]["budget"]["facts"] > 0
    assert history_turns(frames) == 4  # turns 4-7; 1-3 are summarised
    assert done["memoryStrategy"] == "hybrid" and done["truncated"] is False
    budget = done["usage"]["budget"]
    assert budget["summary"] > 0 and budget["facts"] > 0 and budget["history"] > 0
    assert sum(v for k, v in budget.items() if k != "limit") <= budget["limit"]
    # and the state is cached beside the turns, under the session's hash tag
    assert small.redis is not None and small.redis.exists(state_key("s-hybrid"))


def test_the_meta_item_is_never_a_turn(small: Services, aws: Any) -> None:
    chat = Chat(small, "s-meta")
    small.memory_manager.set_strategy("s-meta", "window")
    chat.say("one")
    store = TurnStore(aws.Table("ChatSessions"))
    assert [t.turn for t in store.latest_turns("s-meta", 10, 0)] == [1]
    assert store.last_turn_number("s-meta") == 1
    assert [t.turn for t in small.memory.load("s-meta").turns] == [1]


def test_a_session_can_have_its_own_strategy(small: Services, aws: Any) -> None:
    chat = Chat(small, "s-own")
    small.memory_manager.set_strategy("s-own", "window")
    for i in range(8):
        frames = chat.say(f"message {i}")
    chat.settle()
    assert frames[-1]["memoryStrategy"] == "window"
    assert history_turns(frames) == 4
    (meta,) = meta_items(aws, "s-own")
    assert meta["strategy"] == "window" and "summarized_through" not in meta  # window needs no summary
    # a later update keeps the override: the item is only ever updated, never replaced
    aws.Table("ChatSessions").update_item(
        Key={"session_id": "s-own", "turn_number": 0},
        UpdateExpression="SET #o = :o",
        ExpressionAttributeNames={"#o": "owner"},
        ExpressionAttributeValues={":o": "someone"},
    )
    small.memory_manager.set_strategy("s-own", "hybrid")
    (meta,) = meta_items(aws, "s-own")
    assert meta["owner"] == "someone" and meta["strategy"] == "hybrid"


def test_a_message_larger_than_the_budget_is_refused_before_anything(aws: Any, redis_url: str) -> None:
    settings = make_settings(redis_url, memory={**MEMORY, "budget_tokens": 300})
    services = Services(settings, aws, redis_client(settings), build_chat_model(settings.llm, None))
    chat = Chat(services, "s-big")
    with pytest.raises(ChatError) as refused:
        chat.say("word " * 400)
    assert refused.value.code == "message_too_large"
    assert aws.Table("ChatSessions").query(KeyConditionExpression=Key("session_id").eq("s-big"))["Count"] == 0
    assert frames_sent(chat.binding.connection_id) == []


def test_a_tight_budget_truncates_and_says_so(aws: Any, redis_url: str) -> None:
    settings = make_settings(redis_url, memory={**MEMORY, "budget_tokens": 400, "strategy": "token_budget"})
    services = Services(settings, aws, redis_client(settings), build_chat_model(settings.llm, None))
    chat = Chat(services, "s-tight")
    for i in range(8):
        frames = chat.say(f"message {i} " + "padding " * 20)
        done = frames[-1]
        assert (
            done["usage"]["inputTokens"]
            + done["usage"]["cacheReadInputTokens"]
            + done["usage"]["cacheCreationInputTokens"]
            <= 400
        )
    assert done["truncated"] is True
    notices = [f for f in frames if f["type"] == "notice"]
    assert [n["code"] for n in notices] == ["memory_truncated"]
    assert frames.index(notices[0]) < frames.index(next(f for f in frames if f["type"] == "delta"))
    assert len(encode(done)) < 32 * 1024


def test_consecutive_turns_read_their_prefix_from_the_prompt_cache(small: Services) -> None:
    chat = Chat(small, "s-cache")
    chat.say("first message")
    done = chat.say("second message")[-1]
    assert done["usage"]["cacheReadInputTokens"] > 0
    assert done["usage"]["cacheReadInputTokens"] > done["usage"]["inputTokens"]


class FailingTasks:
    """The offline model, except that the summary task fails while ``failing`` is set (the
    model overloaded); counts the summary requests."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.failing, self.summaries = inner, True, 0

    def stream(self, prompt: Any) -> Any:
        if SUMMARY_TASK in prompt.system:
            self.summaries += 1
            if self.failing:
                raise LlmUnavailable("the model is overloaded")
        return self.inner.stream(prompt)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def failing_services(aws: Any, redis_url: str, **memory: Any) -> tuple[Services, FailingTasks, Clock]:
    settings = make_settings(redis_url, memory={**MEMORY, **memory})
    model = FailingTasks(build_chat_model(settings.llm, None))
    clock = Clock()
    return Services(settings, aws, redis_client(settings), model, clock=clock), model, clock


@pytest.mark.moto_only(TRANSACTIONS)
def test_a_failing_update_backs_off_instead_of_asking_the_model_on_every_turn(
    aws: Any, redis_url: str
) -> None:
    """Given a model that fails the summary: the turns stay whole, the update is tried once and
    then waits (the old code asked again after every turn once a block was due: three times in
    these nine), doubling its wait; once the model is back and the wait is over, the summary is
    written and the count of failures goes."""
    services, model, clock = failing_services(aws, redis_url, update_retry_seconds=60)
    chat = Chat(services, "s-retry")
    for i in range(9):
        frames = chat.say(f"My note {i} is short.")
        chat.settle()
        assert frames[-1]["type"] == "done"  # every turn whole
    assert model.summaries == 1
    (meta,) = meta_items(aws, "s-retry")
    assert "summarized_through" not in meta and int(meta["update_failures"]) == 1
    assert int(meta["update_retry_at"]) == int(clock.now) + 60

    clock.now += 61  # the wait is over; the model still fails: the next wait is twice as long
    chat.say("still there?")
    chat.settle()
    (meta,) = meta_items(aws, "s-retry")
    assert model.summaries == 2 and int(meta["update_failures"]) == 2
    assert int(meta["update_retry_at"]) == int(clock.now) + 120

    model.failing = False
    chat.say("and now?")  # waiting: not asked
    chat.settle()
    assert model.summaries == 2
    clock.now += 121
    chat.say("and now, later?")
    chat.settle()
    (meta,) = meta_items(aws, "s-retry")
    assert int(meta["summarized_through"]) >= 3 and meta["summary"]
    assert "update_failures" not in meta and "update_retry_at" not in meta
    assert services.memory_state.get("s-retry").update_failures == 0  # the cached copy too


@pytest.mark.moto_only(TRANSACTIONS)
def test_an_update_that_keeps_failing_is_given_up_and_parked(aws: Any, redis_url: str) -> None:
    """After ``update_max_attempts`` failures in a row the update fails for good (the summarize
    function's invocation then lands in the dead-letter queue) and waits a day, not minutes."""
    services, model, clock = failing_services(
        aws, redis_url, update_retry_seconds=10, update_max_attempts=3, update_parked_seconds=86_400
    )
    chat = Chat(services, "s-park")
    for i in range(9):
        chat.say(f"My note {i} is short.")
        chat.settle()
    assert model.summaries == 1  # a block was due: it failed once
    assert services.updater.update("s-park") is False  # waiting after the first failure
    clock.now += 11
    assert services.updater.update("s-park") is False  # the second
    clock.now += 21
    with pytest.raises(MemoryUpdateGivenUp):
        services.updater.update("s-park")
    (meta,) = meta_items(aws, "s-park")
    assert model.summaries == 3 and int(meta["update_failures"]) == 3
    assert int(meta["update_retry_at"]) == int(clock.now) + 86_400
    clock.now += 3_600
    assert services.updater.update("s-park") is False and model.summaries == 3  # parked


@pytest.mark.moto_only(TRANSACTIONS)
def test_updates_are_idempotent(small: Services, aws: Any) -> None:
    chat = Chat(small, "s-idem")
    for i in range(7):
        chat.say(f"I like number {i}")
    chat.settle()
    small.updater.update("s-idem")  # notes the session's expiry on the meta item the summary made
    (before,) = meta_items(aws, "s-idem")
    assert small.updater.update("s-idem") is False  # already there: nothing is written
    (after,) = meta_items(aws, "s-idem")
    assert after == before

    # two updaters racing for the same block store one result
    for number, i in enumerate(range(7, 10), start=8):  # three more turns, still being answered
        now = int(time.time())
        Chat(small, "s-idem").services.memory.store.put_user_message(
            Turn(session_id="s-idem", turn=number, user=f"I like number {i}", at=now, expires_at=now + 3600)
        )
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(small.updater.update("s-idem"))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (raced,) = meta_items(aws, "s-idem")
    assert int(raced["summarized_through"]) == 6
    assert sorted(results) in ([False, True], [True, True])  # both may finish, only one wins the write
    facts = raced["facts"]
    assert len({f["key"] for f in facts}) == len(facts)  # updated, not duplicated


def test_preview_plans_the_next_message_as_a_turn_would_and_stores_nothing(small: Services) -> None:
    """Given a session with a few turns, when a message is previewed, then its prompt is the
    one the turn sends for it (the model sees the same request), and nothing is stored."""
    chat = Chat(small, "preview")
    for n in range(3):
        chat.say(f"Message number {n}: my favourite colour is blue.")
    conversation = small.conversation(ENDPOINT)
    before = small.memory.store.turns_between("preview", 1, 10)

    planned = conversation.preview(chat.binding, "What is my favourite colour?")

    assert small.memory.store.turns_between("preview", 1, 10) == before
    assert [m["content"] for m in planned.prompt.messages[:-1:2]] == [t.user for t in before]
    assert planned.prompt.messages[-1]["content"] == "What is my favourite colour?"
    assert planned.plan.strategy == small.settings.memory.strategy
    seen: list[Any] = []

    class Recording:
        def stream(self, prompt: Any) -> Any:
            seen.append(prompt)
            return small.model.stream(prompt)

    from chatmemory.conversation import Conversation

    Conversation(
        small.memory, Recording(), small.sender(ENDPOINT), small.settings, manager=small.memory_manager
    ).send_message(chat.binding, "What is my favourite colour?", None)
    assert seen[0].messages == planned.prompt.messages and seen[0].system == planned.prompt.system


@pytest.mark.moto_only(TRANSACTIONS)
def test_summaries_cut_at_max_tokens_never_corrupt_memory_or_stop_it_moving(aws: Any, redis_url: str) -> None:
    # Given a summary budget so small the model's summaries often overshoot it and are cut
    settings = make_settings(redis_url, memory={**MEMORY, "summary_max_tokens": 50})
    services = Services(settings, aws, redis_client(settings), build_chat_model(settings.llm, None))
    chat = Chat(services, "s-cut")
    # When a long conversation of first-person statements goes on
    for i in range(1, 31):
        chat.say(f"I live in city number {i}. My project is called P{i}.")
        chat.settle()
    # Then the summary kept moving forward, and every stored line is a whole sentence
    (meta,) = meta_items(aws, "s-cut")
    assert int(meta["summarized_through"]) >= 30 - MEMORY["history_turns"] - MEMORY["block_turns"]
    assert meta["summary"]
    assert all(line.rstrip().endswith((".", "!", "?")) for line in meta["summary"].splitlines()), meta[
        "summary"
    ]


class FailingFacts:
    """The offline model, except that the facts task fails while ``failing`` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.failing, self.asked = inner, True, 0

    def stream(self, prompt: Any) -> Any:
        if FACTS_TASK in prompt.system:
            self.asked += 1
            if self.failing:
                raise LlmUnavailable("the model is overloaded")
        return self.inner.stream(prompt)


@pytest.mark.moto_only(TRANSACTIONS)
def test_a_failing_long_term_merge_is_counted_and_retried_when_next_due(aws: Any, redis_url: str) -> None:
    """An opted-in user's facts cannot be merged while the model fails: the worker's run does
    not fail for it (the old code raised, which now dead-letters at once), and the next due
    turn merges them."""
    settings = make_settings(redis_url, memory=MEMORY)
    model = FailingFacts(build_chat_model(settings.llm, None))
    services = Services(settings, aws, redis_client(settings), model)
    chat = Chat(services, "s-merge")
    chat.binding = chat.binding.model_copy(update={"principal": "guest:ada"})
    services.user_memory.opt_in("guest:ada", "s-merge", 0, [])
    chat.say("My name is Ada Lovelace.")  # states a fact: a merge is due
    chat.settle()
    assert model.asked >= 1 and services.user_memory.read_stored("guest:ada").facts == []
    assert services.updater.update("s-merge") is False  # no raise: retried when next due

    model.failing = False
    chat.say("I prefer green tea.")
    chat.settle()
    facts = str(services.user_memory.read_stored("guest:ada").facts)
    assert "Ada Lovelace" in facts and "green tea" in facts


class RefusesFacts:
    """The offline model, except that asked for facts it refuses in prose, as Claude sometimes
    does: no list of changes in the answer."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def stream(self, prompt: Any) -> Any:
        if FACTS_TASK in prompt.system:
            return nullcontext(ReplyStream(iter(["I'm sorry, I can't list facts about this conversation."])))
        return self.inner.stream(prompt)


@pytest.mark.moto_only(TRANSACTIONS)
def test_an_unusable_facts_answer_does_not_stop_the_summary(aws: Any, redis_url: str) -> None:
    settings = make_settings(redis_url, memory=MEMORY)
    services = Services(
        settings, aws, redis_client(settings), RefusesFacts(build_chat_model(settings.llm, None))
    )
    chat = Chat(services, "s-prose")
    for i in range(9):
        chat.say(f"My note {i} is short.")
        chat.settle()

    (meta,) = meta_items(aws, "s-prose")
    assert int(meta["summarized_through"]) == 3 and meta["summary"]  # summarised all the same
    assert meta["facts"] == []  # their facts skipped, not invented
