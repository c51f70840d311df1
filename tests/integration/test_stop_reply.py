"""stopReply through the template's handlers, on moto DynamoDB and real Redis: a reply being
streamed stops at once, its model stream closed, and what was shown is stored as interrupted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from boto3.dynamodb.conditions import Key
from chatmemory.llm.base import Prompt, ReplyStream
from chatmemory.services import Services, redis_client, use_services
from chatmemory.turns import Usage

from tests.conftest import make_settings
from tests.support.frames import frames_sent
from tests.support.gateway import Client
from tests.support.waiting import wait_until


class EndlessModel:
    """Streams a sentence every few milliseconds for as long as it is read (a long answer),
    and notes whether its stream was closed before the end."""

    def __init__(self) -> None:
        self.closed_early = threading.Event()

    @contextmanager
    def stream(self, prompt: Prompt) -> Iterator[ReplyStream]:
        def chunks() -> Iterator[str]:
            try:
                for n in range(2_000):
                    time.sleep(0.005)
                    yield f"Sentence {n} of a very long answer. "
            except GeneratorExit:
                self.closed_early.set()
                raise

        stream = chunks()
        try:
            yield ReplyStream(chunks=stream, usage=Usage(input_tokens=10, output_tokens=0))
        finally:
            stream.close()


@pytest.fixture
def model() -> EndlessModel:
    return EndlessModel()


@pytest.fixture
def services(aws: Any, redis_url: str, model: EndlessModel) -> Iterator[Services]:
    stream = {"flush_chars": 40, "flush_interval_seconds": 0.01, "stop_check_seconds": 0.01}
    settings = make_settings(redis_url, stream=stream)
    built = Services(settings, aws, redis_client(settings), model)
    use_services(built)
    yield built
    use_services(None)


def deltas(connection_id: str) -> str:
    return "".join(f["text"] for f in frames_sent(connection_id) if f["type"] == "delta")


def stop_midway(client: Client, message: str, streamed_chars: int = 1) -> list[dict[str, Any]]:
    """Say ``message``, stop its reply once ``streamed_chars`` of it have streamed; the frames
    it got."""
    answered: list[list[dict[str, Any]]] = []
    streamed = len(deltas(client.connection_id))
    asking = threading.Thread(target=lambda: answered.append(client.say(message)))
    asking.start()
    wait_until(lambda: len(deltas(client.connection_id)) >= streamed + streamed_chars, "the reply streaming")
    before = len(frames_sent(client.connection_id))
    Client(client.connection_id, principal=client.principal).send({"action": "stopReply"})
    asking.join(timeout=60)
    # The turn's own done frame answers the stop; the stop itself sends nothing.
    assert not [f for f in frames_sent(client.connection_id)[before:] if f["type"] not in ("delta", "done")]
    (frames,) = answered
    return frames


def test_a_stopped_reply_is_closed_stored_as_interrupted_and_said_so(
    services: Services, aws: Any, model: EndlessModel
) -> None:
    ada = Client("stop-1", principal="guest:ada")
    ada.connect()
    session_id = next(f for f in ada.send({"action": "getSession"}) if f["type"] == "session")["sessionId"]

    frames = stop_midway(ada, "Tell me everything.")

    assert model.closed_early.is_set()  # the model's stream closed: no tokens paid for unread
    assert frames[-1]["type"] == "done" and frames[-1]["stopped"] is True
    shown = "".join(f["text"] for f in frames if f["type"] == "delta")
    assert 0 < len(shown) < len("Sentence 0 of a very long answer. ") * 2_000
    key = Key("session_id").eq(session_id) & Key("turn_number").eq(1)
    (item,) = aws.Table("ChatSessions").query(KeyConditionExpression=key, ConsistentRead=True)["Items"]
    assert item["status"] == "interrupted" and item["assistant_reply"] == shown  # what was shown

    # The next reply is not stopped by that earlier request; it can be stopped in turn.
    model.closed_early.clear()
    # 1,000 characters: many times the stop check's interval, so the old request was looked at.
    again = stop_midway(ada, "And the rest?", streamed_chars=1_000)
    assert again[-1]["turn"] == 2 and again[-1]["stopped"] is True
    assert len("".join(f["text"] for f in again if f["type"] == "delta")) > 0


def test_a_stop_with_no_cache_says_it_cannot(aws: Any) -> None:
    settings = make_settings(None)
    built = Services(settings, aws, None, EndlessModel())
    use_services(built)
    try:
        ada = Client("stop-2", principal="guest:ada")
        ada.connect()
        (error,) = ada.send({"action": "stopReply"})
        assert error["type"] == "error" and error["code"] == "internal"
    finally:
        use_services(None)
