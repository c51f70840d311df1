"""Cross-session retrieval through the real turn pipeline: moto DynamoDB with the template's
vector index (``local.vector_search`` answers SearchVectors), real Redis, the offline embedding
model, the memory worker in a background thread as on the local stack.

An opted-in user's earlier conversation comes back in a new one when it matters; and, tested as
an attacker would, nothing of one principal's ever reaches another's prompt or frames."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from boto3.dynamodb.conditions import Attr, Key
from chatmemory.llm.base import Prompt, ReplyStream
from chatmemory.memory.crosssession import owner_value
from chatmemory.memory.scheduler import ThreadScheduler
from chatmemory.services import Services, redis_client
from chatmemory.storage.bindings import Binding
from chatmemory.storage.user_memory import UserMemory
from chatmemory.storage.vector_index import OWNER, VECTOR
from chatmemory.turns import Usage

from tests.conftest import make_settings
from tests.support.frames import ENDPOINT, frames_sent

pytestmark = pytest.mark.moto_only("dynalite has no vector indexes (SearchVectors)")

MEMORY = {"history_turns": 6, "block_turns": 3, "budget_tokens": 2_000, "strategy": "retrieval"}
SECRET = "The code for the garden shed is 7319 and the key hides under the blue flowerpot."
QUESTION = "What is the code for my garden shed?"
OTHER_TOPICS = [
    "Which bread flour works best for a sourdough starter?",
    "How do I stop my bicycle chain from squeaking?",
]
ALICE = "user:alice"


class PlainModel:
    """The same generic reply to everything (it never repeats what it was told); keeps every
    prompt, so a test can read all that any principal's requests carried."""

    def __init__(self) -> None:
        self.prompts: list[Prompt] = []

    @contextlib.contextmanager
    def stream(self, prompt: Prompt) -> Iterator[ReplyStream]:
        self.prompts.append(prompt)
        text = "Good question; it depends on what you have at hand, so start simple."
        yield ReplyStream(iter([text]), Usage(input_tokens=100, output_tokens=15))


def text_of(prompt: Prompt) -> str:
    return prompt.system + "\n".join(str(m["content"]) for m in prompt.messages)


class Person:
    """One principal's connection: a session at a time, its frames, the worker awaited."""

    def __init__(self, services: Services, principal: str, session_id: str) -> None:
        self.services, self.principal, self._n = services, principal, 0
        self.open(session_id)

    def open(self, session_id: str) -> None:
        self._n += 1
        self.binding = Binding(
            connection_id=f"c-{session_id}-{self._n}",
            session_id=session_id,
            principal=self.principal,
            connected_at=0,
        )
        self.services.registry.bind(self.binding)
        self._seen = 0

    def frames(self) -> list[dict[str, Any]]:
        frames = frames_sent(self.binding.connection_id)
        new, self._seen = frames[self._seen :], len(frames)
        return new

    def say(self, message: str) -> dict[str, Any]:
        self.services.conversation(ENDPOINT).send_message(self.binding, message, None)
        scheduler = self.services.scheduler
        assert isinstance(scheduler, ThreadScheduler)
        scheduler.drain()  # the worker has embedded (and indexed) this turn
        return next(f for f in self.frames() if f["type"] == "done")

    def long_term(self, on: bool) -> None:
        self.services.memory_controls(ENDPOINT).set_memory(self.binding.connection_id, None, on)
        self.frames()


@pytest.fixture
def services(aws: Any, redis_url: str) -> Services:
    settings = make_settings(redis_url, memory=MEMORY)
    return Services(settings, aws, redis_client(settings), PlainModel())


def prompts(services: Services) -> list[Prompt]:
    model = services.model
    assert isinstance(model, PlainModel)
    return model.prompts


def chat_prompts(services: Services) -> list[Prompt]:
    """The turns' prompts, without the memory worker's (summaries, facts, titles)."""
    return [p for p in prompts(services) if "<memory-task>" not in p.system]


def alice_told_her_secret(services: Services) -> Person:
    alice = Person(services, ALICE, "alice-1")
    alice.long_term(True)
    alice.say("Hello! A few household questions today.")
    alice.say(SECRET)
    for topic in OTHER_TOPICS:
        alice.say(topic)
    return alice


def indexed(aws: Any) -> list[dict[str, Any]]:
    return [dict(i) for i in aws.Table("ChatSessions").scan(FilterExpression=Attr(OWNER).exists())["Items"]]


# ---- the feature ------------------------------------------------------------------------


def test_an_opted_in_user_gets_an_earlier_conversation_back_in_a_new_one(services: Services) -> None:
    alice = alice_told_her_secret(services)

    alice.open("alice-2")
    done = alice.say(QUESTION)

    assert done["crossSession"] == "hybrid"
    assert {"sessionId": "alice-1", "turn": 2} in done["crossSessionTurns"]
    assert done["retrievedTurns"] == []  # nothing of this session's own: it has just begun
    message = chat_prompts(services)[-1].messages[-1]["content"]
    block, question = message.split("</earlier-conversations>\n\n")
    assert question == QUESTION
    assert f"User: {SECRET}" in block
    headers = [line for line in block.splitlines() if line.startswith("[conversation ")]
    assert headers and all(h.startswith("[conversation alice-1 · ") for h in headers)  # its id, its date
    budget = done["usage"]["budget"]
    assert budget["retrieved"] > 0
    assert sum(v for k, v in budget.items() if k not in ("limit", "historyTurns")) <= budget["limit"]


def test_the_worker_indexes_float32_vectors_of_the_index_dimensions_under_a_keyed_owner(
    services: Services, aws: Any
) -> None:
    alice_told_her_secret(services)

    items = indexed(aws)

    assert {i["session_id"] for i in items} == {"alice-1"}
    assert {len(i[VECTOR]) for i in items} == {services.settings.embeddings.dimensions}
    memory = services.user_memory.read_stored(ALICE)
    expected = owner_value(b"test-owner-key", ALICE, memory.generation)
    assert {i[OWNER] for i in items} == {expected}  # not the principal, nor anything a client sent
    assert ALICE not in expected


def test_nothing_is_indexed_or_searched_for_a_user_who_did_not_opt_in(services: Services, aws: Any) -> None:
    carol = Person(services, "user:carol", "carol-1")
    carol.say(SECRET)
    carol.open("carol-2")

    done = carol.say(QUESTION)

    assert indexed(aws) == []
    assert "crossSession" not in done and "crossSessionTurns" not in done


def test_what_was_said_before_opting_in_is_not_indexed(services: Services, aws: Any) -> None:
    dave = Person(services, "user:dave", "dave-1")
    dave.say(SECRET)
    dave.long_term(True)
    dave.say("And now a question about tomatoes.")

    assert [int(i["turn_number"]) for i in indexed(aws)] == [2]


def test_when_the_search_fails_the_turn_answers_without_it_and_says_so(aws: Any, redis_url: str) -> None:
    settings = make_settings(redis_url, memory={**MEMORY, "cross_session_index": "no_such_index"})
    services = Services(settings, aws, redis_client(settings), PlainModel())
    alice = alice_told_her_secret(services)
    alice.open("alice-2")

    answers = [alice.say(f"{QUESTION} ({n})") for n in range(3)]  # past the breakers' fail_max

    assert all(d["crossSession"] == "unavailable" and d["crossSessionTurns"] == [] for d in answers)
    assert all(d["memoryMode"] == "full" for d in answers)
    # The index's breaker opened, not the turn store's: every reply is stored whole.
    assert services.breakers.vectors.current_state == "open"
    assert services.breakers.dynamodb.current_state == "closed"
    stored = aws.Table("ChatSessions").query(
        KeyConditionExpression=Key("session_id").eq("alice-2") & Key("turn_number").gt(0)
    )["Items"]
    assert [i["status"] for i in stored] == ["complete"] * 3


# ---- as an attacker would --------------------------------------------------------------


@pytest.mark.parametrize("attacker", ["user:bob", "guest:0f6c2b4e-attacker"])
def test_another_principal_copying_her_words_gets_nothing_of_hers(services: Services, attacker: str) -> None:
    alice_told_her_secret(services)
    bob = Person(services, attacker, "bob-1")
    bob.long_term(True)
    bob.say(SECRET.replace("7319", "0000"))  # his own turn, in his words and hers
    before = len(prompts(services))
    bob.open("bob-2")

    done = bob.say(QUESTION)
    done_again = bob.say(SECRET.replace("7319", "what"))  # her words, word for word

    assert {t["sessionId"] for t in done["crossSessionTurns"] + done_again["crossSessionTurns"]} == {"bob-1"}
    seen = "\n".join(text_of(p) for p in prompts(services)[before:]) + json.dumps([done, done_again])
    assert "7319" not in seen and "alice-1" not in seen


def test_naming_her_session_gets_nothing_of_hers(services: Services) -> None:
    alice_told_her_secret(services)
    bob = Person(services, "user:bob", "bob-1")
    bob.long_term(True)
    memory = services.user_memory.read_stored("user:bob")
    assert services.cross_session is not None

    # Searching as Bob from Alice's own session id (as if he had bound to it) excludes only
    # that session: what is left is still scoped to Bob.
    found = services.cross_session.search("user:bob", memory, "alice-2", SECRET)

    assert found is not None and found.turns == []


def test_crafted_owner_values_and_generations_find_nothing_of_hers(services: Services, aws: Any) -> None:
    alice_told_her_secret(services)
    hers = services.user_memory.read_stored(ALICE)
    assert services.cross_session is not None
    search = services.cross_session.search

    # Bob's memory copied from hers (same generation, opted in): his principal still keys it.
    assert search("user:bob", hers, "bob-1", SECRET).turns == []  # type: ignore[union-attr]
    # A principal string that embeds hers, and hers with another generation.
    assert search(f"{ALICE}\x00{hers.generation}", hers, "x", SECRET).turns == []  # type: ignore[union-attr]
    other_generation = UserMemory(long_term=True, generation=hers.generation + 1)
    assert search(ALICE, other_generation, "x", SECRET).turns == []  # type: ignore[union-attr]
    # Her owner value made without the server's key (a plain hash, or another key).
    store = services.cross_session._store
    vector = services.recall._embedder.embed_query(SECRET)  # type: ignore[union-attr]
    for forged in (
        owner_value(b"", ALICE, hers.generation),
        owner_value(b"guess", ALICE, hers.generation),
        ALICE,
    ):
        assert store.search(forged, vector, 10) == []


def test_after_she_opts_out_her_earlier_conversations_stay_out(services: Services, aws: Any) -> None:
    alice = alice_told_her_secret(services)
    alice.open("alice-2")
    alice.long_term(False)

    done = alice.say(QUESTION)

    assert "crossSession" not in done  # checked at query time: stopped at once
    assert "7319" not in text_of(chat_prompts(services)[-1])
    # Opting in again starts a new generation: the vectors written before match no owner.
    alice.long_term(True)
    done = alice.say(QUESTION)
    assert done["crossSession"] == "hybrid"
    assert all(t["sessionId"] != "alice-1" for t in done["crossSessionTurns"])
    assert "7319" not in text_of(chat_prompts(services)[-1])


def test_erasure_takes_the_vectors_with_the_turns(services: Services, aws: Any) -> None:
    alice = alice_told_her_secret(services)
    alice.open("alice-2")
    alice.say("Something else entirely: what is a good first houseplant?")
    assert {i["session_id"] for i in indexed(aws)} == {"alice-1", "alice-2"}

    services.data_rights(ENDPOINT).delete_session(alice.binding.connection_id)
    assert {i["session_id"] for i in indexed(aws)} == {"alice-1"}

    services.data_rights(ENDPOINT).delete_my_data(alice.binding.connection_id)
    assert indexed(aws) == []


def test_the_export_says_what_retrieval_keeps_of_each_turn(services: Services) -> None:
    alice = alice_told_her_secret(services)

    frames = services.data_rights(ENDPOINT).export_session(alice.binding.connection_id)

    document = json.loads("".join(f["data"] for f in frames))
    assert document["kept"]["embeddings"] == [1, 2, 3, 4]
    assert document["kept"]["acrossSessions"] == [1, 2, 3, 4]
    assert "other chats" in document["kept"]["about"]


def test_when_the_owner_key_cannot_be_read_the_turn_answers_without_the_search(
    aws: Any, redis_url: str
) -> None:
    # The key named, and no such secret in Secrets Manager (moto's): a real lookup failure.
    memory = {**MEMORY, "owner_key": None, "owner_key_secret_name": "no-such-secret"}
    settings = make_settings(redis_url, memory=memory)
    services = Services(settings, aws, redis_client(settings), PlainModel())
    alice = alice_told_her_secret(services)
    alice.open("alice-2")

    done = alice.say(QUESTION)

    assert done["crossSession"] == "unavailable" and done["memoryMode"] == "full"
    assert indexed(aws) == []  # nothing could be keyed, so nothing was indexed
