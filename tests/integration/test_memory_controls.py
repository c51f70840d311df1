"""Memory controls through the template's handlers, on moto DynamoDB and real Redis: a session's
own strategy (newSession.memoryStrategy, setMemory) and long-term user memory (setMemory
longTerm, getUserMemory, forgetUserMemory, carried into the principal's new sessions)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from boto3.dynamodb.conditions import Key
from chatmemory.llm.anthropic_model import build_chat_model
from chatmemory.llm.base import ChatModel, Prompt, ReplyStream
from chatmemory.memory.scheduler import ThreadScheduler
from chatmemory.memory.state import Fact, FactChange
from chatmemory.memory.updater import MemoryUpdater
from chatmemory.services import Services, redis_client, use_services
from chatmemory.storage.bindings import Binding
from chatmemory.storage.user_memory import user_key, user_partition

from tests.conftest import make_settings
from tests.support.cached import holds_no_data
from tests.support.frames import ENDPOINT, frames_sent
from tests.support.gateway import Client

TRANSACTIONS = "the memory update is a TransactWriteItems, which dynalite lacks"

# A summary (and facts) every 2 turns from turn 4 on.
MEMORY = {"history_turns": 2, "block_turns": 2}


class RecordingModel:
    """The offline model; each chat request's prompt is kept (memory tasks pass by)."""

    def __init__(self, inner: ChatModel) -> None:
        self._inner = inner
        self.prompts: list[Prompt] = []

    def stream(self, prompt: Prompt) -> AbstractContextManager[ReplyStream]:
        if "<memory-task>" not in prompt.system:  # a summary, facts, a title
            self.prompts.append(prompt)
        return self._inner.stream(prompt)


@pytest.fixture
def model() -> RecordingModel:
    settings = make_settings(None)
    return RecordingModel(build_chat_model(settings.llm, None))


@pytest.fixture
def services(aws: Any, redis_url: str, model: RecordingModel) -> Iterator[Services]:
    settings = make_settings(redis_url, memory=MEMORY)
    built = Services(settings, aws, redis_client(settings), model)
    use_services(built)
    yield built
    use_services(None)


def settle(services: Services) -> None:
    assert isinstance(services.scheduler, ThreadScheduler)
    services.scheduler.drain()


def only(frames: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (frame,) = [f for f in frames if f["type"] == kind]
    return frame


def session_of(client: Client) -> dict[str, Any]:
    return only(client.send({"action": "getSession"}), "session")


def user_items(aws: Any, principal: str) -> list[dict[str, Any]]:
    table = aws.Table("ChatSessions")
    key = Key("session_id").eq(user_partition(principal))
    return table.query(KeyConditionExpression=key, ConsistentRead=True)["Items"]


def meta_item(aws: Any, session_id: str) -> dict[str, Any] | None:
    item = aws.Table("ChatSessions").get_item(Key={"session_id": session_id, "turn_number": 0})
    return item.get("Item")


def talk(client: Client, services: Services, *messages: str) -> list[dict[str, Any]]:
    """Say each message, then let the summary/facts updates they scheduled finish."""
    frames: list[dict[str, Any]] = []
    for message in messages:
        frames = client.say(message)
        assert frames[-1]["type"] == "done", frames
    settle(services)
    return frames


FILLER = ("Tell me about rivers.", "And about lakes?", "What about the sea?")


def last_context(model: RecordingModel) -> str:
    prompt = model.prompts[-1]
    return prompt.system + "\n".join(m["content"] for m in prompt.messages[:-1])


# ---- a session's own strategy -----------------------------------------------------------------


def test_new_session_with_a_strategy_uses_it_and_reports_it(services: Services, aws: Any) -> None:
    client = Client("st-1", principal="guest:ada")
    client.connect()
    assert session_of(client)["memoryStrategy"] == "hybrid"  # the deployment's

    frame = only(client.send({"action": "newSession", "memoryStrategy": "window"}), "session")

    assert frame["memoryStrategy"] == "window" and frame["resumed"] is False
    assert meta_item(aws, frame["sessionId"])["strategy"] == "window"  # type: ignore[index]
    assert client.say("hello")[-1]["memoryStrategy"] == "window"
    again = session_of(client)
    assert again["sessionId"] == frame["sessionId"] and again["memoryStrategy"] == "window"


def test_set_memory_changes_the_bound_sessions_strategy(services: Services) -> None:
    client = Client("st-2", principal="guest:ada")
    client.connect()
    session_id = session_of(client)["sessionId"]
    assert client.say("one")[-1]["memoryStrategy"] == "hybrid"

    frame = only(client.send({"action": "setMemory", "memoryStrategy": "token_budget"}), "memory")

    assert frame == {
        "type": "memory",
        "sessionId": session_id,
        "memoryStrategy": "token_budget",
        "longTerm": False,
    }
    assert client.say("two")[-1]["memoryStrategy"] == "token_budget"
    assert session_of(client)["memoryStrategy"] == "token_budget"


@pytest.mark.parametrize(
    "body",
    [
        {"action": "newSession", "memoryStrategy": "everything"},
        {"action": "newSession", "memoryStrategy": 3},
        {"action": "setMemory"},
        {"action": "setMemory", "memoryStrategy": "nope"},
        {"action": "setMemory", "longTerm": "yes"},
        {"action": "setMemory", "longTerm": True, "extra": 1},
        {"action": "forgetUserMemory", "key": ""},
        {"action": "forgetUserMemory", "key": "k" * 81},
        {"action": "getUserMemory", "all": True},
    ],
)
def test_bad_values_get_an_error_frame_and_change_nothing(
    services: Services, aws: Any, body: dict[str, Any]
) -> None:
    client = Client("bad-1", principal="guest:ada")
    client.connect()
    before = session_of(client)["sessionId"]

    (frame,) = client.send(body)

    assert frame["type"] == "error" and frame["code"] == "bad_request", frame
    assert session_of(client)["sessionId"] == before
    assert meta_item(aws, before) is None
    assert user_items(aws, "guest:ada") == []


def test_memory_changes_on_someone_elses_session_are_forbidden(services: Services, aws: Any) -> None:
    owner = Client("own-1", principal="guest:ada")
    owner.connect()
    session_id = session_of(owner)["sessionId"]
    owner.say("My name is Ada")
    intruder = Client("int-1", principal="guest:eve")
    intruder.connect()
    services.registry.bind(  # a binding that somehow points at Ada's session
        Binding(connection_id="int-1", session_id=session_id, principal="guest:eve", connected_at=0)
    )

    for body in (
        {"action": "setMemory", "memoryStrategy": "window"},
        {"action": "setMemory", "longTerm": True},
    ):
        (frame,) = intruder.send(body)
        assert frame["type"] == "error" and frame["code"] == "forbidden", body

    meta = meta_item(aws, session_id) or {}  # only the session's listing, under Ada
    assert "strategy" not in meta and meta.get("listed_by") in (None, "guest:ada")
    assert user_items(aws, "guest:eve") == []


def test_an_anonymous_connection_cannot_keep_long_term_memory(services: Services, aws: Any) -> None:
    client = Client("anon-1")  # no authorizer: everyone is "anonymous"
    client.connect()
    (frame,) = client.send({"action": "setMemory", "longTerm": True})
    assert frame["type"] == "error" and frame["code"] == "forbidden"
    assert user_items(aws, "anonymous") == []
    assert only(client.send({"action": "getUserMemory"}), "userMemory")["longTerm"] is False


# ---- long-term user memory --------------------------------------------------------------------


def test_an_opted_in_users_facts_reach_their_new_sessions_and_no_one_elses(
    services: Services, aws: Any, model: RecordingModel
) -> None:
    ada = Client("lt-1", principal="guest:ada")
    ada.connect()
    assert only(ada.send({"action": "setMemory", "longTerm": True}), "memory")["longTerm"] is True
    talk(ada, services, "My name is Ada Lovelace.", *FILLER)  # turn 4: turns 1-2 summarised
    (item,) = user_items(aws, "guest:ada")
    assert item["long_term"] is True
    assert [(f["key"], f["value"]) for f in item["facts"]] == [("name", "Ada Lovelace")]

    # a new session of Ada's starts knowing her name, counted in the budget
    ada.send({"action": "newSession"})
    frames = ada.say("Hello again")
    assert "Ada Lovelace" in last_context(model) and "<user-facts>" in model.prompts[-1].system
    budget = frames[-1]["usage"]["budget"]
    assert budget["userFacts"] > 0
    assert sum(v for k, v in budget.items() if k != "limit") <= budget["limit"]
    assert frames[-1]["truncated"] is False

    # and so does her next connection, in a session of its own
    again = Client("lt-2", principal="guest:ada")
    again.connect()
    again.say("Hi")
    assert "Ada Lovelace" in last_context(model)

    # never another principal's
    bob = Client("lt-3", principal="guest:bob")
    bob.connect()
    frames = bob.say("Hello, who am I?")
    assert "Ada Lovelace" not in last_context(model) and "<user-facts>" not in model.prompts[-1].system
    assert frames[-1]["usage"]["budget"]["userFacts"] == 0


@pytest.mark.moto_only(TRANSACTIONS)
def test_without_opting_in_nothing_carries_over(services: Services, aws: Any, model: RecordingModel) -> None:
    ada = Client("no-1", principal="guest:ada")
    ada.connect()
    talk(ada, services, "My name is Ada Lovelace.", *FILLER)
    assert meta_item(aws, session_of(ada)["sessionId"])["facts"]  # type: ignore[index]  # the session has it
    assert user_items(aws, "guest:ada") == []

    ada.send({"action": "newSession"})
    frames = ada.say("Hello again")
    assert "Ada Lovelace" not in last_context(model)
    assert frames[-1]["usage"]["budget"]["userFacts"] == 0
    assert only(ada.send({"action": "getUserMemory"}), "userMemory")["facts"] == []


@pytest.mark.moto_only(TRANSACTIONS)
def test_opting_in_keeps_the_facts_the_session_already_has(services: Services, aws: Any) -> None:
    ada = Client("in-1", principal="guest:ada")
    ada.connect()
    talk(ada, services, "My name is Ada Lovelace.", "I prefer green tea.", *FILLER)
    session_id = session_of(ada)["sessionId"]

    ada.send({"action": "setMemory", "longTerm": True})

    frame = only(ada.send({"action": "getUserMemory"}), "userMemory")
    assert frame["longTerm"] is True and frame["part"] == frame["parts"] == 1
    assert {f["key"]: f["value"] for f in frame["facts"]} == {
        "name": "Ada Lovelace",
        "preference": "green tea",
    }
    assert {f["sessionId"] for f in frame["facts"]} == {session_id}


def test_a_changed_fact_supersedes_the_kept_one(services: Services, aws: Any, model: RecordingModel) -> None:
    ada = Client("sup-1", principal="guest:ada")
    ada.connect()
    ada.send({"action": "setMemory", "longTerm": True})
    talk(ada, services, "My name is Ada.", *FILLER)
    ada.send({"action": "newSession"})
    talk(ada, services, "Actually, my name is Ada Lovelace.", *FILLER)

    (item,) = user_items(aws, "guest:ada")
    assert [(f["key"], f["value"]) for f in item["facts"]] == [("name", "Ada Lovelace")]
    ada.send({"action": "newSession"})
    ada.say("Hi")
    assert "- name: Ada Lovelace" in model.prompts[-1].system
    assert model.prompts[-1].system.count("- name:") == 1


@pytest.mark.moto_only(TRANSACTIONS)
def test_forget_one_fact_then_all_erases_them_from_dynamodb_and_redis(
    services: Services, aws: Any, model: RecordingModel
) -> None:
    assert services.redis is not None
    ada = Client("fg-1", principal="guest:ada")
    ada.connect()
    ada.send({"action": "setMemory", "longTerm": True})
    talk(ada, services, "My name is Ada Lovelace.", "I prefer green tea.", *FILLER)
    ada.send({"action": "newSession"})
    ada.say("Hello")  # the user memory is cached now
    assert services.redis.exists(user_key("guest:ada"))

    frame = only(ada.send({"action": "forgetUserMemory", "key": "name"}), "userMemory")

    assert [f["key"] for f in frame["facts"]] == ["preference"]
    (item,) = user_items(aws, "guest:ada")
    assert [f["key"] for f in item["facts"]] == ["preference"]
    cached = services.redis.get(user_key("guest:ada"))
    assert cached is not None and b"Ada Lovelace" not in cached
    ada.say("Hello")
    assert "Ada Lovelace" not in model.prompts[-1].system and "green tea" in model.prompts[-1].system

    (error,) = ada.send({"action": "forgetUserMemory", "key": "name"})
    assert error["type"] == "error" and error["code"] == "bad_request"

    frame = only(ada.send({"action": "forgetUserMemory"}), "userMemory")

    assert frame["longTerm"] is False and frame["facts"] == []
    assert user_items(aws, "guest:ada") == []
    assert holds_no_data(services.redis, user_key("guest:ada"))
    ada.send({"action": "newSession"})
    frames = ada.say("Hello")
    assert "<user-facts>" not in model.prompts[-1].system
    assert frames[-1]["usage"]["budget"]["userFacts"] == 0


def test_opting_out_erases_and_stops_collecting(services: Services, aws: Any) -> None:
    assert services.redis is not None
    ada = Client("out-1", principal="guest:ada")
    ada.connect()
    ada.send({"action": "setMemory", "longTerm": True})
    talk(ada, services, "My name is Ada Lovelace.", *FILLER)
    assert user_items(aws, "guest:ada")

    frame = only(ada.send({"action": "setMemory", "longTerm": False}), "memory")

    assert frame["longTerm"] is False
    assert user_items(aws, "guest:ada") == [] and holds_no_data(services.redis, user_key("guest:ada"))
    talk(ada, services, "My deadline is Friday.", "More filler.")  # turn 6: turns 3-4 summarised
    assert user_items(aws, "guest:ada") == []


def test_a_retried_merge_is_applied_once_and_cannot_revive_a_forgotten_fact(
    services: Services, aws: Any
) -> None:
    users = services.user_memory
    users.opt_in("guest:ada", "s-1", 0, [])
    changes = [FactChange(key="name", value="Ada")]
    read = users.read_stored("guest:ada")
    assert users.merge_turns("guest:ada", read, "s-1", 2, changes) is True
    users.forget_fact("guest:ada", "name")

    assert users.merge_turns("guest:ada", read, "s-1", 2, changes) is False  # the worker's retry

    (item,) = user_items(aws, "guest:ada")
    assert item["facts"] == [] and item["cursors"] == {"s-1": 2}
    # A merge that read the memory before the erasure is told to read it again, not written.
    assert users.merge_turns("guest:ada", read, "s-1", 4, changes) is None
    fresh = users.read_stored("guest:ada")
    assert users.merge_turns("guest:ada", fresh, "s-1", 4, changes) is True  # a new block is merged


def test_a_guests_memory_expires_with_its_token_a_users_does_not(services: Services, aws: Any) -> None:
    services.user_memory.opt_in("guest:ada", "s-1", 0, [])
    services.user_memory.opt_in("user:grace", "s-2", 0, [])
    (guest,) = user_items(aws, "guest:ada")
    (user,) = user_items(aws, "user:grace")
    ttl = services.settings.identity.guest_token_ttl_seconds
    assert abs(int(guest["ttl"]) - (int(services.clock()) + ttl)) <= 5
    assert "ttl" not in user


def test_the_budget_holds_when_the_kept_facts_do_not_fit(aws: Any, redis_url: str) -> None:
    settings = make_settings(redis_url, memory={**MEMORY, "budget_tokens": 400})
    services = Services(settings, aws, redis_client(settings), build_chat_model(settings.llm, None))
    use_services(services)
    try:
        facts = [Fact(key=f"topic {i}", value="x" * 300, turn=0) for i in range(8)]
        services.user_memory.opt_in("guest:ada", "s-0", 0, facts)
        ada = Client("big-1", principal="guest:ada")
        ada.connect()
        frames = ada.say("Hello")
        done = frames[-1]
        budget = done["usage"]["budget"]
        assert sum(v for k, v in budget.items() if k != "limit") <= budget["limit"] == 400
        assert budget["userFacts"] == 0 and done["truncated"] is True
        assert any(f["type"] == "notice" and f["code"] == "memory_truncated" for f in frames)
    finally:
        use_services(None)


def test_each_turn_reports_the_budgets_token_error_against_the_models_count(services: Services) -> None:
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider
    from chatmemory.observability import metrics

    binding = Binding(connection_id="m-1", session_id="s-metric", principal="guest:ada", connected_at=0)
    metrics.clear_metrics()
    services.conversation(ENDPOINT).send_message(binding, "Hello there, how are you?", None)
    provider = metrics.provider
    assert isinstance(provider, AmazonCloudWatchEMFProvider)
    (error,) = provider.metric_set["TokenEstimateErrorPercent"]["Value"]
    done = [f for f in frames_sent("m-1") if f["type"] == "done"][-1]
    budget, usage = done["usage"]["budget"], done["usage"]
    counted = sum(v for k, v in budget.items() if k != "limit")
    reported = usage["inputTokens"] + usage["cacheReadInputTokens"] + usage["cacheCreationInputTokens"]
    assert error == round(100 * (counted - reported) / reported, 2)
    metrics.clear_metrics()


# ---- long-term memory within a few turns ------------------------------------------------------


class ShiftedClock:
    """The real clock, moved on by the test (so a turn can come a second after an erasure)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class PendingScheduler:
    """Keeps the memory updates asked for, for the test to run when it wants: an asynchronous
    invocation still queued (or a retry not yet run) when the user does something else."""

    def __init__(self, updater: MemoryUpdater) -> None:
        self.updater = updater
        self.pending: list[str] = []

    def schedule(self, session_id: str) -> None:
        self.pending.append(session_id)

    def run(self) -> None:
        queued, self.pending = self.pending, []
        for session_id in queued:
            self.updater.update(session_id)


@pytest.fixture
def default_cadence(aws: Any, redis_url: str, model: RecordingModel) -> Iterator[Services]:
    """The deployment's defaults: the session's own facts only after turn 20."""
    settings = make_settings(redis_url)
    built = Services(settings, aws, redis_client(settings), model)
    use_services(built)
    yield built
    use_services(None)


@pytest.fixture
def pending(aws: Any, redis_url: str, model: RecordingModel) -> Iterator[tuple[Services, ShiftedClock]]:
    # A strategy that does not search: retrieval schedules a run after every turn (to embed it),
    # and these tests watch what long-term memory alone schedules.
    settings = make_settings(redis_url, memory={"strategy": "facts"})
    clock = ShiftedClock()
    built = Services(
        settings, aws, redis_client(settings), model, clock=clock, scheduler_factory=PendingScheduler
    )
    use_services(built)
    yield built, clock
    use_services(None)


def queued(services: Services) -> PendingScheduler:
    assert isinstance(services.scheduler, PendingScheduler)
    return services.scheduler


def kept(aws: Any, principal: str) -> list[tuple[str, str]]:
    items = user_items(aws, principal)
    return [(f["key"], f["value"]) for f in items[0]["facts"]] if items else []


def test_a_fact_stated_in_a_three_turn_chat_is_in_the_next_sessions_context(
    default_cadence: Services, aws: Any, model: RecordingModel
) -> None:
    ada = Client("k-1", principal="guest:ada")
    ada.connect()
    ada.send({"action": "setMemory", "longTerm": True})
    talk(ada, default_cadence, "My name is Ada Lovelace.", "Tell me about rivers.", "And about lakes?")

    first = session_of(ada)["sessionId"]
    state = meta_item(aws, first) or {}
    assert int(state.get("summarized_through", 0)) == 0 and not state.get("facts")  # its cadence is unchanged
    assert kept(aws, "guest:ada") == [("name", "Ada Lovelace")]

    ada.send({"action": "newSession"})
    frames = ada.say("Hello again, who am I?")
    assert "Ada Lovelace" in model.prompts[-1].system
    assert frames[-1]["usage"]["budget"]["userFacts"] > 0
    budget = frames[-1]["usage"]["budget"]
    assert sum(v for k, v in budget.items() if k != "limit") <= budget["limit"]


def test_the_long_term_cursor_moves_every_k_turns_and_at_once_after_a_stated_fact(
    pending: tuple[Services, ShiftedClock], aws: Any
) -> None:
    services, _ = pending
    every = services.settings.memory.long_term_every_turns
    ada = Client("k-2", principal="guest:ada")
    ada.connect()
    ada.send({"action": "setMemory", "longTerm": True})
    session = session_of(ada)["sessionId"]
    for n in range(1, every):
        ada.say(f"Tell me about river number {n}.")
    assert queued(services).pending == []  # small talk: not yet due
    ada.say("And the sea?")  # turn K
    assert queued(services).pending == [session]
    queued(services).run()
    assert user_items(aws, "guest:ada")[0]["cursors"] == {session: every}

    ada.say("I prefer short answers.")  # states a fact: due at once
    assert queued(services).pending == [session]
    queued(services).run()
    queued(services).run()  # a duplicate run finds nothing to do
    assert kept(aws, "guest:ada") == [("preference", "short answers")]
    assert user_items(aws, "guest:ada")[0]["cursors"] == {session: every + 1}


def test_nothing_is_collected_without_opting_in(pending: tuple[Services, ShiftedClock], aws: Any) -> None:
    services, _ = pending
    ada = Client("k-3", principal="guest:ada")
    ada.connect()
    for message in ("My name is Ada.", "I prefer tea.", "More.", "More still."):
        ada.say(message)
    assert queued(services).pending == []
    assert user_items(aws, "guest:ada") == []


def test_a_fact_erased_while_its_merge_is_pending_does_not_come_back(
    pending: tuple[Services, ShiftedClock], aws: Any, model: RecordingModel
) -> None:
    services, clock = pending
    ada = Client("k-4", principal="guest:ada")
    ada.connect()
    ada.send({"action": "setMemory", "longTerm": True})
    ada.say("My name is Ada.")
    queued(services).run()
    assert kept(aws, "guest:ada") == [("name", "Ada")]

    # another chat restates it; its merge is still queued when she erases the fact
    ada.send({"action": "newSession"})
    ada.say("My name is Ada Lovelace.")
    waiting = list(queued(services).pending)
    assert waiting
    only(ada.send({"action": "forgetUserMemory", "key": "name"}), "userMemory")
    queued(services).run()
    queued(services).pending = waiting
    queued(services).run()  # and Lambda's retry of it
    assert kept(aws, "guest:ada") == []

    # what she says after the erasure is kept again
    clock.offset += 2
    ada.say("My name is Countess Ada.")
    queued(services).run()
    assert kept(aws, "guest:ada") == [("name", "Countess Ada")]


def test_everything_erased_while_a_merge_is_pending_stays_erased_after_opting_in_again(
    pending: tuple[Services, ShiftedClock], aws: Any, model: RecordingModel
) -> None:
    services, clock = pending
    ada = Client("k-5", principal="guest:ada")
    ada.connect()
    ada.send({"action": "setMemory", "longTerm": True})
    ada.say("My name is Ada.")
    waiting = list(queued(services).pending)
    assert waiting

    only(ada.send({"action": "forgetUserMemory"}), "userMemory")  # or setMemory longTerm false
    queued(services).run()  # a merge running after the erasure: not opted in, nothing kept
    assert user_items(aws, "guest:ada") == []

    clock.offset += 2
    other = Client("k-6", principal="guest:ada")
    other.connect()
    other.send({"action": "setMemory", "longTerm": True})  # from another chat
    queued(services).pending = waiting
    queued(services).run()  # the first chat's merge, retried late
    assert kept(aws, "guest:ada") == []
    ada.say("Tell me about rivers.")
    ada.say("And lakes?")
    ada.say("And the sea?")
    queued(services).run()  # the first chat's next merges: its turns before the erasure stay out
    assert kept(aws, "guest:ada") == []
    assert "Ada" not in model.prompts[-1].system


def test_a_merge_that_read_the_memory_before_an_erasure_writes_nothing(services: Services, aws: Any) -> None:
    users = services.user_memory
    users.opt_in("guest:ada", "s-1", 0, [])
    before = users.read_stored("guest:ada")
    users.forget_all("guest:ada")
    users.opt_in("guest:ada", "s-2", 0, [])  # a new item, as far as versions go

    assert users.merge_turns("guest:ada", before, "s-1", 3, [FactChange(key="name", value="Ada")]) is None
    assert kept(aws, "guest:ada") == []
    assert int(user_items(aws, "guest:ada")[0]["version"]) != before.version


def test_a_merge_while_the_user_talks_leaves_the_sessions_prompt_prefix_unchanged(
    default_cadence: Services, aws: Any, model: RecordingModel
) -> None:
    ada = Client("k-7", principal="guest:ada")
    ada.connect()
    ada.send({"action": "setMemory", "longTerm": True})
    talk(ada, default_cadence, "My name is Ada Lovelace.")  # kept: the next session starts with it
    ada.send({"action": "newSession"})
    before = len(model.prompts)
    talk(ada, default_cadence, "Hello.", "I prefer short answers.", "Tell me about rivers.", "And lakes?")

    assert kept(aws, "guest:ada") == [("name", "Ada Lovelace"), ("preference", "short answers")]
    systems = {p.system for p in model.prompts[before:]}
    assert len(systems) == 1 and "Ada Lovelace" in next(iter(systems))  # merged mid-session, prefix intact


def test_delete_my_data_while_a_merge_is_pending_stays_erased(
    pending: tuple[Services, ShiftedClock], aws: Any
) -> None:
    services, _ = pending
    ada = Client("k-8", principal="guest:ada")
    ada.connect()
    ada.send({"action": "setMemory", "longTerm": True})
    ada.say("My name is Ada.")
    queued(services).run()
    ada.say("I prefer tea.")
    waiting = list(queued(services).pending)
    assert waiting and kept(aws, "guest:ada") == [("name", "Ada")]

    assert any(f["type"] == "deleted" for f in ada.send({"action": "deleteMyData"}))
    queued(services).pending = waiting
    queued(services).run()  # late, and retried
    queued(services).pending = waiting
    queued(services).run()

    assert user_items(aws, "guest:ada") == []
    assert not services.redis or holds_no_data(services.redis, user_key("guest:ada"))
