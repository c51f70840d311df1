"""The metrics the alarms and the dashboard of template.yaml watch, as the handlers publish
them (CloudWatch embedded metric format on stdout), through the real handlers on moto and Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chatmemory.llm.anthropic_model import build_chat_model
from chatmemory.observability import NAMESPACE, SERVICE
from chatmemory.services import Services, redis_client, use_services
from chatmemory.storage.bindings import binding_key

from tests.conftest import make_settings
from tests.support.gateway import Client


def published(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The EMF documents written since the last call, one per handler invocation."""
    out = capsys.readouterr().out
    documents = []
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            documents.append(json.loads(line))
    return documents


def values(document: dict[str, Any], name: str) -> list[float]:
    """A metric's values in one document, after checking it is declared in our namespace with
    the service dimension the alarms select on."""
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    declared = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    if name not in declared:
        return []
    assert directive["Namespace"] == NAMESPACE
    assert directive["Dimensions"] == [["service"]] and document["service"] == SERVICE
    value = document[name]
    return [float(v) for v in (value if isinstance(value, list) else [value])]


def unit(document: dict[str, Any], name: str) -> str:
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    return str({m["Name"]: m["Unit"] for m in directive["Metrics"]}[name])


def test_a_turn_publishes_its_latency_memory_mode_and_tokens(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Client("metrics-1")
    client.connect()
    published(capsys)

    frames = client.say("Recommend dark fantasy manga for beginners")

    (document,) = published(capsys)
    (latency,) = values(document, "TurnLatency")
    assert latency > 0 and unit(document, "TurnLatency") == "Milliseconds"
    assert values(document, "MemoryMode_full") == [1]
    usage = frames[-1]["usage"]
    assert values(document, "InputTokens") == [usage["inputTokens"]]
    assert values(document, "OutputTokens") == [usage["outputTokens"]]


def test_disconnect_publishes_the_conversations_end_and_the_turn_it_reached(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Client("metrics-2")
    client.connect()
    for message in ("one", "two", "three"):
        client.say(message)
    published(capsys)

    client.disconnect()

    (document,) = published(capsys)
    assert values(document, "ConversationEnded") == [1]
    assert values(document, "TurnsPerSession") == [3]
    # and the binding is gone from both stores
    assert services.redis is not None and services.redis.get(binding_key("metrics-2")) is None
    assert services.registry.lookup("metrics-2") is None


def test_a_connection_without_a_binding_ends_without_a_turn_count(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    Client("metrics-never-bound").disconnect()

    (document,) = published(capsys)
    assert values(document, "ConversationEnded") == [1]
    assert values(document, "TurnsPerSession") == []


def test_with_redis_down_the_count_comes_from_dynamodb_and_the_breaker_opening_is_published(
    services: Services, aws: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Client("metrics-3")
    client.connect()
    client.say("one")
    client.say("two")
    # The same tables, and a Redis nobody listens on (the breaker opens after two failures).
    dead = make_settings("redis://127.0.0.1:1/0", breaker={"fail_max": 2, "reset_timeout_seconds": 60})
    use_services(Services(dead, aws, redis_client(dead), services.model))
    published(capsys)

    client.disconnect()

    (document,) = published(capsys)
    assert values(document, "ConversationEnded") == [1]
    assert values(document, "TurnsPerSession") == [2]
    assert values(document, "BreakerOpened") == [1]
    assert values(document, "RedisBreakerOpen") == [1]


def test_without_the_cache_memory_comes_straight_from_dynamodb(
    aws: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """EnableCache=false: the template gives the functions an empty REDIS_URL."""
    settings = make_settings("")
    assert redis_client(settings) is None
    use_services(Services(settings, aws, redis_client(settings), build_chat_model(settings.llm, None)))
    try:
        client = Client("metrics-no-cache")
        client.connect()
        client.say("My name is Ada")
        frames = client.say("What is my name?")
        published(capsys)
        client.disconnect()
    finally:
        use_services(None)

    assert frames[-1]["type"] == "done" and frames[-1]["memoryMode"] == "full" and frames[-1]["turn"] == 2
    (document,) = published(capsys)
    assert values(document, "TurnsPerSession") == [2]
    assert values(document, "CacheMiss") == [1] and values(document, "BreakerOpened") == []


class AcceptingLambda:
    """Lambda's Invoke API, as far as an asynchronous self-invocation needs (202, queued)."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.payloads.append(kwargs["Payload"])
        return {"StatusCode": 202}


def test_a_handed_off_turn_publishes_its_handoff_when_it_acknowledges(
    aws: Any, redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatmemory import handoff

    settings = make_settings(redis_url, stream={"handoff": "lambda"})
    use_services(Services(settings, aws, redis_client(settings), build_chat_model(settings.llm, None)))
    lambda_api = AcceptingLambda()
    monkeypatch.setattr(handoff, "_client", lambda_api)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "chat-SendMessageFunction-X1")
    try:
        client = Client("metrics-handoff")
        client.connect()
        published(capsys)

        assert client.say("Hello") == []  # acknowledged: the worker answers

        (document,) = published(capsys)
        assert values(document, "HandedOff") == [1] and len(lambda_api.payloads) == 1
    finally:
        use_services(None)


def test_a_memory_update_on_a_thread_publishes_its_metrics_when_it_ends(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    from chatmemory.memory.scheduler import ThreadScheduler

    client = Client("metrics-update", principal="guest:ada")
    client.connect()
    client.send({"action": "setMemory", "longTerm": True})
    client.say("My name is Ada Lovelace.")  # a stated fact: merged into long-term memory after the reply
    assert isinstance(services.scheduler, ThreadScheduler)
    services.scheduler.drain()

    merged = [d for d in published(capsys) if values(d, "UserMemoryMerged")]
    assert len(merged) == 1 and "TurnLatency" not in merged[0]  # its own document, not the turn's
