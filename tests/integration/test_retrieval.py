"""Retrieval memory through the real turn pipeline: moto DynamoDB, real Redis, an offline
embedding model, the memory worker in a background thread as on the local stack. A long
session whose early turn no longer fits the budget still brings that turn back for the
question that needs it, and says which turns it brought back.

The replies come from a model that never repeats what it was told (as Claude mostly does not),
so the only way back to an early turn is retrieval."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
from botocore.config import Config
from chatmemory.embeddings import BedrockEmbedder
from chatmemory.llm.base import Prompt, ReplyStream
from chatmemory.services import Services, redis_client
from chatmemory.storage.corpus import CorpusRepository
from chatmemory.storage.keys import corpus_key
from chatmemory.storage.turns import TurnStore
from chatmemory.turns import Usage

from tests.conftest import make_settings
from tests.support.chat import Chat
from tests.support.frames import ENDPOINT
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


class PlainModel:
    """Answers every message with the same generic advice; keeps the last prompt it got."""

    def __init__(self) -> None:
        self.prompts: list[Prompt] = []

    @contextlib.contextmanager
    def stream(self, prompt: Prompt) -> Iterator[ReplyStream]:
        self.prompts.append(prompt)
        text = "That depends on a few things; start small, check the result, and adjust as you go."
        size = len(prompt.system) + sum(len(m["content"]) for m in prompt.messages)
        yield ReplyStream(iter([text]), Usage(input_tokens=size // 4, output_tokens=len(text) // 4))


def services_with(aws: Any, redis_url: str, **extra: Any) -> Services:
    settings = make_settings(redis_url, memory=MEMORY)
    return Services(settings, aws, redis_client(settings), PlainModel(), **extra)


class RetrievalChat(Chat):
    def say(self, message: str) -> list[dict[str, Any]]:
        frames = super().say(message)
        self.settle()  # the worker has embedded this turn
        return frames

    def done(self, message: str) -> dict[str, Any]:
        return next(f for f in self.say(message) if f["type"] == "done")


def long_chat(services: Services, session_id: str) -> RetrievalChat:
    """A planted fact at turn 2, then 40 turns of other topics: far outside the budget."""
    chat = RetrievalChat(services, session_id)
    chat.say("Hello, I have a few questions today.")
    chat.say(PLANTED)
    for i in range(40):
        chat.say(f"{FILLER[i % len(FILLER)]} (variant {i})")
    return chat


@pytest.fixture
def retrieving(aws: Any, redis_url: str) -> Services:
    return services_with(aws, redis_url)


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
    assert 2 in [t.turn for t in recalled.candidates[:2]]  # the planted turn or its neighbour first

    done = chat.done(QUESTION)

    turns = done["retrievedTurns"]
    assert turns == sorted(turns)
    model = retrieving.model
    assert isinstance(model, PlainModel)
    message = model.prompts[-1].messages[-1]["content"]
    block, question = message.split("</earlier-turns>\n\n")
    assert question == QUESTION
    # Each run of consecutive turns of one day under one header, its date; oldest first.
    headers = [line for line in block.splitlines() if line.startswith("[")]
    assert headers and all(h.rstrip("]").split()[-1].isdigit() for h in headers)  # "[8 May 2023]"
    assert len(headers) <= len(turns) and block.count("User: ") == len(turns)
    assert f"User: {PLANTED}\nAssistant: That depends" in block  # both sides


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
    services = services_with(
        aws, redis_url, embedder=BedrockEmbedder(dead, "amazon.titan-embed-text-v2:0", 256)
    )
    chat = long_chat(services, "s-keyword")

    done = chat.done(QUESTION)

    assert done["retrieval"] == "keyword"
    assert 2 in done["retrievedTurns"]


def test_with_redis_unreachable_the_corpus_comes_from_dynamodb(aws: Any, redis_url: str) -> None:
    services = services_with(aws, f"redis://127.0.0.1:{free_port()}/0")
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
    assert len(embedded) == 42  # every answered turn, 4 + 256 bytes each (int8 and a scale)
    assert {len(bytes(i["vec"].value)) for i in embedded} == {260}

    client = redis.Redis.from_url(redis_url)
    client.delete(corpus_key("s-durable"))
    recalled = retrieving.recall.search("s-durable", QUESTION, set())
    assert recalled.mode == "hybrid"
    assert 2 in [t.turn for t in recalled.candidates[:2]]
    assert client.llen(corpus_key("s-durable")) == 43  # its generation header, then the turns


def test_a_warm_process_reads_only_the_turns_added_since_its_last_search(
    retrieving: Services, aws: Any, redis_url: str
) -> None:
    chat = long_chat(retrieving, "s-warm")
    corpus = CorpusRepository(
        TurnStore(aws.Table("ChatSessions")),
        redis.Redis.from_url(redis_url),
        retrieving.breakers,
        3_600,
        time.time,
    )
    first = corpus.read_since("s-warm", None)
    assert first.whole and first.cursor is not None and len(first.passages) == 42

    chat.say("By the way, my bicycle is a green Bianchi from 1987.")  # the worker appends it
    after = corpus.read_since("s-warm", first.cursor)

    assert not after.whole
    assert [p.turn.turn for p in after.passages] == [43]
    # The warm search index took the same entries, and finds the new turn by its words.
    found = retrieving.recall.search("s-warm", "Which year is my Bianchi bicycle from?", set())
    assert 43 in [t.turn for t in found.candidates[:3]], [t.turn for t in found.candidates[:5]]


def test_a_rebuilt_or_erased_corpus_is_read_whole_again(
    retrieving: Services, aws: Any, redis_url: str
) -> None:
    long_chat(retrieving, "s-rebuilt")
    client = redis.Redis.from_url(redis_url)
    corpus = CorpusRepository(
        TurnStore(aws.Table("ChatSessions")), client, retrieving.breakers, 3_600, time.time
    )
    seen = corpus.read_since("s-rebuilt", None)

    client.delete(corpus_key("s-rebuilt"))  # expired, evicted or erased
    again = corpus.read_since("s-rebuilt", seen.cursor)

    assert again.whole and len(again.passages) == 42  # from DynamoDB, cached as a new generation
    assert again.cursor is not None and seen.cursor is not None
    assert again.cursor.generation != seen.cursor.generation
    assert corpus.read_since("s-rebuilt", seen.cursor).whole  # the old cursor is stale


def test_deleting_the_session_erases_its_corpus(retrieving: Services, redis_url: str) -> None:
    chat = long_chat(retrieving, "s-erase")
    client = redis.Redis.from_url(redis_url)
    assert client.exists(corpus_key("s-erase"))

    retrieving.registry.bind(chat.binding)
    retrieving.data_rights(ENDPOINT).delete_session(chat.binding.connection_id)

    assert not client.exists(corpus_key("s-erase"))
    assert retrieving.recall.search("s-erase", QUESTION, set()).candidates == []
