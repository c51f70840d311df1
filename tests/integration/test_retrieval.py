"""Retrieval memory through the real turn pipeline: moto DynamoDB, real Redis, the offline
embedding model, the memory worker in a background thread as on the local stack. A long
session whose early turn no longer fits the budget still brings that turn back for the
question that needs it, and says which turns it brought back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
from botocore.config import Config
from chatmemory.cache import corpus_key
from chatmemory.connections import Binding
from chatmemory.embeddings import BedrockEmbedder
from chatmemory.llm.anthropic_model import build_chat_model
from chatmemory.memory.scheduler import ThreadScheduler
from chatmemory.services import Services, redis_client

from tests.conftest import make_settings
from tests.support.frames import ENDPOINT, frames_sent
from tests.support.processes import free_port

MEMORY = {"history_turns": 6, "block_turns": 3, "budget_tokens": 1_500, "strategy": "retrieval"}
FILLER = [
    "Can you suggest a name for a bakery that sells sourdough bread?",
    "What is a good stretch for the lower back after running?",
    "How long should I boil an egg so the yolk stays soft?",
    "Which houseplants survive in a dark north-facing room?",
    "Explain the offside rule in football in two sentences.",
]
PLANTED = "My sister's cat is called Mephistopheles and it sleeps on the piano in Tromsø."
QUESTION = "What is the name of my sister's cat?"


class Chat:
    def __init__(self, services: Services, session_id: str) -> None:
        self.services = services
        self.binding = Binding(
            connection_id=f"c-{session_id}", session_id=session_id, principal="p", connected_at=0
        )
        self._seen = 0

    def say(self, message: str) -> list[dict[str, Any]]:
        self.services.conversation(ENDPOINT).send_message(self.binding, message, None)
        frames = frames_sent(self.binding.connection_id)
        new, self._seen = frames[self._seen :], len(frames)
        scheduler = self.services.scheduler
        assert isinstance(scheduler, ThreadScheduler)
        scheduler.drain()  # the worker has embedded this turn
        return new

    def done(self, message: str) -> dict[str, Any]:
        return next(f for f in self.say(message) if f["type"] == "done")


def long_chat(services: Services, session_id: str) -> Chat:
    """A planted fact at turn 2, then 40 turns of other topics: far outside the budget."""
    chat = Chat(services, session_id)
    chat.say("Hello, I have a few questions today.")
    chat.say(PLANTED)
    for i in range(40):
        chat.say(f"{FILLER[i % len(FILLER)]} (variant {i})")
    return chat


@pytest.fixture
def retrieving(aws: Any, redis_url: str) -> Iterator[Services]:
    settings = make_settings(redis_url, memory=MEMORY)
    yield Services(settings, aws, redis_client(settings), build_chat_model(settings.llm, None))


def test_an_early_turn_outside_the_budget_comes_back_for_the_question_that_needs_it(
    retrieving: Services,
) -> None:
    chat = long_chat(retrieving, "s-recall")

    done = chat.done(QUESTION)

    assert 2 in done["retrievedTurns"]
    assert done["retrieval"] == "hybrid"
    budget = done["usage"]["budget"]
    assert budget["retrieved"] > 0
    assert sum(v for k, v in budget.items() if k != "limit") <= budget["limit"]
    assert done["truncated"] is False  # older turns are searched, not silently dropped


def test_retrieved_turns_are_dated_both_sides_oldest_first_in_the_new_message(retrieving: Services) -> None:
    chat = long_chat(retrieving, "s-prompt")
    recalled = retrieving.recall.search("s-prompt", QUESTION, set())
    assert recalled.candidates[0].turn == 2  # the planted turn ranks first
    done = chat.done(QUESTION)
    turns = done["retrievedTurns"]
    assert turns == sorted(turns)


def test_with_the_embedding_service_unreachable_keywords_still_find_the_turn(
    aws: Any, redis_url: str
) -> None:
    # A Bedrock client pointed at a port nobody listens on: a real connection failure.
    dead = boto3.client(
        "bedrock-runtime",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        config=Config(connect_timeout=0.2, read_timeout=0.2, retries={"max_attempts": 1}),
    )
    settings = make_settings(redis_url, memory=MEMORY)
    services = Services(
        settings,
        aws,
        redis_client(settings),
        build_chat_model(settings.llm, None),
        embedder=BedrockEmbedder(dead, "amazon.titan-embed-text-v2:0", 256),
    )
    chat = long_chat(services, "s-keyword")

    done = chat.done(QUESTION)

    assert done["retrieval"] == "keyword"
    assert 2 in done["retrievedTurns"]


def test_with_redis_unreachable_the_corpus_comes_from_dynamodb(aws: Any, redis_url: str) -> None:
    settings = make_settings(f"redis://127.0.0.1:{free_port()}/0", memory=MEMORY)
    services = Services(settings, aws, redis_client(settings), build_chat_model(settings.llm, None))
    chat = long_chat(services, "s-no-redis")

    done = chat.done(QUESTION)

    assert done["memoryMode"] == "full"
    assert done["retrieval"] == "hybrid"
    assert 2 in done["retrievedTurns"]


def test_the_vectors_are_kept_on_the_turn_items_and_rebuilt_into_redis(
    retrieving: Services, aws: Any, redis_url: str
) -> None:
    long_chat(retrieving, "s-durable")
    items = aws.Table("ChatSessions").scan()["Items"]
    embedded = [i for i in items if i["session_id"] == "s-durable" and "vec" in i]
    assert len(embedded) == 42  # every answered turn, 4 + 256 bytes each
    assert {len(bytes(i["vec"].value)) for i in embedded} == {260}

    client = redis.Redis.from_url(redis_url)
    client.delete(corpus_key("s-durable"))
    recalled = retrieving.recall.search("s-durable", QUESTION, set())
    assert recalled.mode == "hybrid"
    assert recalled.candidates[0].turn == 2
    assert client.llen(corpus_key("s-durable")) == 42


def test_deleting_the_session_erases_its_corpus(retrieving: Services, redis_url: str) -> None:
    chat = long_chat(retrieving, "s-erase")
    client = redis.Redis.from_url(redis_url)
    assert client.exists(corpus_key("s-erase"))

    retrieving.registry.bind(chat.binding)
    retrieving.data_rights(ENDPOINT).delete_session(chat.binding.connection_id)

    assert not client.exists(corpus_key("s-erase"))
    assert retrieving.recall.search("s-erase", QUESTION, set()).candidates == []
