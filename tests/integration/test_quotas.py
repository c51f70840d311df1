"""Quotas per principal and guest limits per source, on real Redis and DynamoDB (moto, dynalite):
over a limit a principal gets ``rate_limited`` with when to retry, nothing is stored and the
model is not called; either store alone keeps counting, and a Redis emptied by a restart does
not reset anyone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from boto3.dynamodb.conditions import Key
from chatmemory.authentication import build_authenticator
from chatmemory.breakers import Breakers
from chatmemory.config import BreakerSettings, QuotaSettings, Settings
from chatmemory.identity import Unauthorized, source_of
from chatmemory.quotas import GuestAdmission, Quotas, TooManyGuests
from chatmemory.services import Services, redis_client, use_services
from chatmemory.storage.quota_counters import QuotaCounters, Window

from tests.conftest import make_settings
from tests.support.gateway import Client
from tests.support.models import ScriptedModel

LIMIT = 3


def quota_settings(redis_url: str | None, **quota: Any) -> Settings:
    return make_settings(
        redis_url, quota={"messages_per_window": LIMIT, "message_window_seconds": 3600, **quota}
    )


def live(aws: Any, settings: Settings, replies: int = 20, output_tokens: int = 10) -> ScriptedModel:
    model = ScriptedModel([(f"reply {i}", output_tokens) for i in range(replies)])
    use_services(Services(settings, aws, redis_client(settings), model))
    return model


@pytest.fixture(autouse=True)
def reset_services() -> Iterator[None]:
    yield
    use_services(None)


def guest() -> Client:
    client = Client(f"conn-{uuid.uuid4().hex[:12]}", principal=f"guest:{uuid.uuid4()}")
    assert client.connect() == {"statusCode": 200}
    return client


def stored_turns(aws: Any, session_id: str) -> list[dict[str, Any]]:
    table = aws.Table("ChatSessions")
    items = table.query(KeyConditionExpression=Key("session_id").eq(session_id), ConsistentRead=True)["Items"]
    return [i for i in items if "user_message" in i]


def session_of(client: Client) -> str:
    (frame,) = [f for f in client.send({"action": "getSession"}) if f["type"] == "session"]
    return str(frame["sessionId"])


def test_a_principal_over_its_message_rate_is_refused_without_storing_or_calling_the_model(
    aws: Any, redis_url: str
) -> None:
    # Given a principal that sent as many messages as the window allows
    model = live(aws, quota_settings(redis_url))
    ada, bob = guest(), guest()
    for i in range(LIMIT):
        assert ada.say(f"message {i}")[-1]["type"] == "done"
    # When it sends one more
    frames = ada.say("one too many")
    # Then it is refused with when to retry, nothing is stored and the model is not asked
    assert [f["type"] for f in frames] == ["error"]
    (error,) = frames
    assert error["code"] == "rate_limited"
    assert error["limit"] == "messages"
    assert 0 < error["retryAfterSeconds"] <= 3600
    assert "Try again in" in error["message"]
    assert len(model.prompts) == LIMIT
    assert [t["user_message"] for t in stored_turns(aws, session_of(ada))] == [
        f"message {i}" for i in range(LIMIT)
    ]
    # And another principal is still answered
    assert bob.say("hello")[-1]["type"] == "done"
    assert len(model.prompts) == LIMIT + 1


def test_done_says_what_is_left_once_little_is(aws: Any, redis_url: str) -> None:
    live(aws, quota_settings(redis_url, messages_per_window=10, warn_share=0.2))
    ada = guest()
    dones = [ada.say(f"message {i}")[-1] for i in range(9)]
    assert all(d["type"] == "done" for d in dones)
    assert all("quota" not in d for d in dones[:7])  # 3 or more of 10 left: nothing said
    assert dones[8]["quota"]["messagesLeft"] == 1
    assert 0 < dones[8]["quota"]["messagesResetInSeconds"] <= 3600
    assert dones[8]["quota"]["tokensLeft"] > 0


def test_a_principal_over_its_daily_tokens_is_refused(aws: Any, redis_url: str) -> None:
    # Given a day's tokens used up by one long reply
    model = live(
        aws, quota_settings(redis_url, messages_per_window=100, tokens_per_day=500), output_tokens=600
    )
    ada = guest()
    assert ada.say("write me a long story")[-1]["type"] == "done"
    # When the principal sends another message, it is refused until the day's window closes
    (error,) = ada.say("and another")
    assert error["code"] == "rate_limited"
    assert error["limit"] == "tokens"
    assert 3600 < error["retryAfterSeconds"] <= 86_400
    assert len(model.prompts) == 1


def counters(client: redis.Redis[bytes] | None, table: Any) -> QuotaCounters:
    return QuotaCounters(
        client, table, Breakers.from_settings(BreakerSettings(fail_max=1, reset_timeout_seconds=600))
    )


WINDOW = Window("messages", 2, 3600)


@pytest.mark.parametrize("store", ["redis", "dynamodb"])
def test_either_store_alone_counts(aws: Any, redis_url: str, store: str) -> None:
    client = redis.Redis.from_url(redis_url) if store == "redis" else None
    table = aws.Table("ChatSessions") if store == "dynamodb" else None
    quotas = Quotas(
        counters(client, table), QuotaSettings(messages_per_window=2, message_window_seconds=3600)
    )
    quotas.admit("guest:a")
    quotas.admit("guest:a")
    with pytest.raises(Exception, match="used up messages") as refused:
        quotas.admit("guest:a")
    assert refused.value.fields()["limit"] == "messages"  # type: ignore[attr-defined]
    quotas.admit("guest:b")


def test_a_redis_emptied_by_a_restart_does_not_reset_the_count(aws: Any, redis_url: str) -> None:
    # Given counts in both stores, then Redis losing everything (a restart without persistence)
    client = redis.Redis.from_url(redis_url)
    quotas = Quotas(
        counters(client, aws.Table("ChatSessions")),
        QuotaSettings(messages_per_window=2, message_window_seconds=3600),
    )
    quotas.admit("guest:a")
    quotas.admit("guest:a")
    client.flushdb()
    # Then the principal is still over its limit: DynamoDB's count decides
    with pytest.raises(Exception, match="used up messages"):
        quotas.admit("guest:a")


def test_a_down_redis_falls_back_to_dynamodb(aws: Any) -> None:
    # A Redis nobody answers at: every count goes to DynamoDB (and the breaker opens)
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    quotas = Quotas(
        counters(dead, aws.Table("ChatSessions")),
        QuotaSettings(messages_per_window=2, message_window_seconds=3600),
    )
    quotas.admit("guest:a")
    quotas.admit("guest:a")
    with pytest.raises(Exception, match="used up messages"):
        quotas.admit("guest:a")
    item = aws.Table("ChatSessions").get_item(Key={"session_id": "quota#messages#guest:a", "turn_number": 0})[
        "Item"
    ]
    assert item["quota_count"] == 3
    assert item["ttl"] > item["window_end"] // 1000


def test_a_closed_window_opens_anew(aws: Any, redis_url: str) -> None:
    now = [1_000_000.0]
    both = QuotaCounters(
        redis.Redis.from_url(redis_url),
        aws.Table("ChatSessions"),
        Breakers.from_settings(BreakerSettings()),
        clock=lambda: now[0],
    )
    table_only = QuotaCounters(
        None, aws.Table("ChatSessions"), Breakers.from_settings(BreakerSettings()), lambda: now[0]
    )
    assert [c.value for c in (both.add("p", [(WINDOW, 1)]) or [])] == [1]
    assert [c.value for c in (both.add("p", [(WINDOW, 1)]) or [])] == [2]
    now[0] += 3601
    assert [c.value for c in (table_only.add("p", [(WINDOW, 1)]) or [])] == [1]
    assert [c.value for c in (table_only.add("p", [(WINDOW, 0)]) or [])] == [1]


def test_guests_from_one_source_are_limited_to_the_burst(aws: Any, redis_url: str) -> None:
    admission = GuestAdmission(
        counters(redis.Redis.from_url(redis_url), aws.Table("ChatSessions")),
        QuotaSettings(guests_per_source_burst=3, guests_per_source_per_hour=5),
    )
    for _ in range(3):
        admission.admit("198.51.100.7")
    with pytest.raises(TooManyGuests, match="guests_burst"):
        admission.admit("198.51.100.7")
    admission.admit("198.51.100.8")  # another source is not affected


def test_guests_are_limited_to_the_sustained_rate(aws: Any, redis_url: str) -> None:
    admission = GuestAdmission(
        counters(redis.Redis.from_url(redis_url), aws.Table("ChatSessions")),
        QuotaSettings(guests_per_source_burst=10, guests_per_source_per_hour=2),
    )
    admission.admit("198.51.100.7")
    admission.admit("198.51.100.7")
    with pytest.raises(TooManyGuests, match="guests_hour"):
        admission.admit("198.51.100.7")


def test_the_authenticator_refuses_a_new_guest_over_the_limit_but_not_a_returning_one(redis_url: str) -> None:
    # The authorizer's own wiring: clients built from the settings (a table that does not exist
    # locally is a DynamoDB fault, so Redis alone counts here).
    settings = make_settings(
        redis_url,
        identity={"guest_token_key": "k" * 32},
        quota={"guests_per_source_burst": 2},
        storage={
            "dynamodb_endpoint_url": "http://127.0.0.1:1",
            "connect_timeout_seconds": 0.2,
            "max_attempts": 1,
        },
    )
    authenticator = build_authenticator(settings)
    first = authenticator.authenticate(None, "203.0.113.9")
    authenticator.authenticate(None, "203.0.113.9")
    with pytest.raises(Unauthorized):
        authenticator.authenticate(None, "203.0.113.9")
    assert first.new_guest_token is not None
    assert authenticator.authenticate(first.new_guest_token, "203.0.113.9").principal == first.principal


def test_the_source_of_a_connection() -> None:
    assert source_of("198.51.100.7", None, 0) == "198.51.100.7"
    # One IPv6 host holds its /64: counted as one source
    assert (
        source_of("2001:db8:1:2:aaaa::1", None, 0)
        == source_of("2001:db8:1:2:bbbb::2", None, 0)
        == "2001:db8:1:2::/64"
    )
    # Behind one trusted proxy: the address it appended, not what the client claimed before it
    headers = {"X-Forwarded-For": "10.0.0.1, 198.51.100.9"}
    assert source_of("192.0.2.1", headers, 1) == "198.51.100.9"
    assert source_of("192.0.2.1", headers, 0) == "192.0.2.1"
    assert source_of("192.0.2.1", {}, 1) == "192.0.2.1"
