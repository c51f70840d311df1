"""Memory degrades, the user is still answered: breakers over a real redis-server and a
moto DynamoDB server over HTTP that the tests stop and restart."""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pybreaker
import pytest
from boto3.dynamodb.conditions import Key
from chatmemory.observability import logger
from chatmemory.services import Services, use_services

from local.template import create_tables
from tests.conftest import TABLE_NAMES, make_settings
from tests.support.frames import history_turns
from tests.support.gateway import Client
from tests.support.processes import MotoHttpServer, RedisProcess
from tests.support.waiting import probes_now, run_out_reset_timeouts, wait_until

# Longer than any test: an open breaker stays open until the test runs its timeout out
# (``Live.wait_for_reset``), however slow the machine; the unit tests time it for real.
RESET_TIMEOUT = 600.0


@dataclass
class Live:
    services: Services
    redis: RedisProcess
    dynamodb: MotoHttpServer

    def client(self) -> Client:
        client = Client(f"conn-{uuid.uuid4().hex[:12]}")
        assert client.connect() == {"statusCode": 200}
        return client

    def wait_for_reset(self) -> None:
        """Every open breaker's reset timeout runs out: its next call probes."""
        breakers = vars(self.services.breakers).values()
        run_out_reset_timeouts(*breakers)
        assert all(probes_now(b) for b in breakers)


@pytest.fixture
def live() -> Iterator[Live]:
    with RedisProcess() as redis_proc, MotoHttpServer() as dynamodb, MotoHttpServer() as connections:
        create_tables(
            boto3.resource("dynamodb", endpoint_url=dynamodb.url, region_name="us-east-1"), TABLE_NAMES
        )
        settings = make_settings(
            redis_proc.url,
            # Generous: DynamoDB fails here by being stopped (refused at once), never by stalling;
            # a busy machine's slow moto must not open its breaker in a test about Redis.
            storage={
                "dynamodb_endpoint_url": dynamodb.url,
                "connect_timeout_seconds": 2.0,
                "read_timeout_seconds": 5.0,
            },
            stream={"connections_endpoint_url": connections.url},
            breaker={"fail_max": 2, "reset_timeout_seconds": RESET_TIMEOUT},
        )
        services = Services.from_settings(settings)
        use_services(services)
        yield Live(services, redis_proc, dynamodb)
        use_services(None)


class CallsAttempted(pybreaker.CircuitBreakerListener):
    """Counts the calls a breaker let through to the dependency (an open one lets none)."""

    def __init__(self) -> None:
        self.calls = 0

    def before_call(
        self, cb: pybreaker.CircuitBreaker, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        self.calls += 1


def kinds(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


def done_of(frames: list[dict[str, Any]]) -> dict[str, Any]:
    assert frames and frames[-1]["type"] == "done", frames
    return frames[-1]


def test_redis_stopped_mid_conversation_changes_nothing_the_user_sees(live: Live) -> None:
    client = live.client()
    client.say("My name is Ada")

    # When Redis dies
    live.redis.kill()
    answers = [client.say(f"question {i}") for i in range(3)]

    # Then every answer is full, from DynamoDB, without a notice, and remembers the first turn
    for i, frames in enumerate(answers):
        assert "notice" not in kinds(frames)
        assert done_of(frames)["memoryMode"] == "full"
        assert history_turns(frames) == i + 1  # the first turn and the questions before
    # and the breaker is open, so no turn waits on the dead Redis
    assert live.services.breakers.redis.current_state == pybreaker.STATE_OPEN
    attempts = CallsAttempted()
    live.services.breakers.redis.add_listener(attempts)
    client.say("fast?")
    live.services.breakers.redis.remove_listener(attempts)
    assert live.services.breakers.redis.current_state == pybreaker.STATE_OPEN

    # When Redis is back, after the reset timeout the half-open probe closes the breaker
    live.redis.start()
    live.wait_for_reset()
    frames = client.say("and now?")
    assert done_of(frames)["memoryMode"] == "full"
    assert history_turns(frames) == 5
    assert live.services.breakers.redis.current_state == pybreaker.STATE_CLOSED
    # a turn with the breaker open never called Redis, so it never paid a Redis timeout
    assert attempts.calls == 0


def test_dynamodb_failing_gives_cache_only_answers_with_a_notice(live: Live) -> None:
    client = live.client()
    client.say("My name is Ada")
    client.say("I like green tea")

    live.dynamodb.stop()
    frames = client.say("What do I like?")

    assert kinds(frames)[0] == "notice"
    assert frames[0]["code"] == "memory_degraded"
    assert done_of(frames)["memoryMode"] == "cache_only"
    assert history_turns(frames) == 2  # both earlier turns, from the cache

    # Full memory comes back when DynamoDB does
    live.dynamodb.start()
    live.wait_for_reset()
    frames = client.say("Still there?")
    assert "notice" not in kinds(frames)
    assert done_of(frames)["memoryMode"] == "full"
    assert history_turns(frames) == 2  # the cache-only turn was not stored


def test_both_failing_gives_stateless_answers_with_a_notice(live: Live) -> None:
    client = live.client()
    client.say("My name is Ada")

    live.redis.kill()
    live.dynamodb.stop()
    frames = client.say("What is my name?")

    assert frames[0]["type"] == "notice" and frames[0]["code"] == "memory_unavailable"
    assert done_of(frames)["memoryMode"] == "stateless"
    assert history_turns(frames) == 0

    # and both back: full memory again, the stateless turn was not stored
    live.redis.start()
    live.dynamodb.start()
    live.wait_for_reset()
    frames = client.say("Hello again")
    assert done_of(frames)["memoryMode"] == "full"
    assert history_turns(frames) == 1


@contextmanager
def logged() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The Powertools Logger's JSON lines written inside the block."""
    stream = io.StringIO()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    previous = handler.setStream(stream)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    finally:
        handler.setStream(previous)


def test_a_stalled_redis_costs_a_timeout_until_the_breaker_opens(live: Live) -> None:
    client = live.client()
    client.say("first")

    live.redis.stall()
    try:
        for i in range(3):
            frames = client.say(f"stalled {i}")
            assert done_of(frames)["memoryMode"] == "full"
        assert live.services.breakers.redis.current_state == pybreaker.STATE_OPEN
        # While open, no Redis call is made: every cache step fails fast with the breaker's
        # own error, none waits for a socket timeout (read from the logger's own output).
        with logged() as lines:
            frames = client.say("breaker open")
        failures = [line["error"] for line in lines() if str(line.get("message", "")).startswith("Redis")]
        assert failures and set(failures) == {"CircuitBreakerError"}, failures
        assert history_turns(frames) == 4
    finally:
        live.redis.resume()


def test_a_cache_that_missed_a_write_is_never_served(live: Live) -> None:
    """Redis fails between the DynamoDB write and the cache write; when it is back, the
    stale entry (missing that turn) is dropped before anyone reads it."""
    client = live.client()
    client.say("one")
    client.say("two")  # cached: [1, 2]

    live.redis.stall()
    try:
        client.say("three")  # stored in DynamoDB; the cache write times out
    finally:
        live.redis.resume()
    live.wait_for_reset()

    (session,) = [f for f in client.send({"action": "getSession"}) if f["type"] == "session"]
    assert [t["user"] for t in session["history"]] == ["one", "two", "three"]
    frames = client.say("four")
    assert history_turns(frames) == 3


def test_long_term_memory_with_redis_dead_is_read_from_dynamodb_and_erasure_says_it_is_not_done(
    live: Live,
) -> None:
    from chatmemory.memory.state import Fact

    users = live.services.user_memory
    users.opt_in("guest:ada", "s-0", 0, [Fact(key="name", value="Ada Lovelace", turn=0)])
    client = Client(f"conn-{uuid.uuid4().hex[:12]}", principal="guest:ada")
    assert client.connect() == {"statusCode": 200}
    assert done_of(client.say("Hello"))["usage"]["budget"]["userFacts"] > 0  # cached in Redis now

    live.redis.kill()
    frames = client.say("Do you still know me?")

    assert done_of(frames)["usage"]["budget"]["userFacts"] > 0  # from DynamoDB
    # the cached copy cannot be erased while Redis is down: not reported as erased
    (error,) = client.send({"action": "forgetUserMemory"})
    assert error["type"] == "error" and error["code"] == "internal"

    live.redis.start()
    live.wait_for_reset()
    (frame,) = client.send({"action": "forgetUserMemory"})
    assert frame["type"] == "userMemory" and frame["facts"] == []
    assert done_of(client.say("And now?"))["usage"]["budget"]["userFacts"] == 0


def test_a_reply_that_could_not_be_stored_does_not_leave_the_session_busy(live: Live) -> None:
    """DynamoDB goes away after the message is stored and before the reply is: the user is told
    it is not kept, and the next message is answered, not refused as busy while DynamoDB still
    says pending (the handler marked the turn ended in Redis)."""
    client = live.client()
    client.say("one")
    (session,) = [f for f in client.send({"action": "getSession"}) if f["type"] == "session"]
    table = boto3.resource("dynamodb", endpoint_url=live.dynamodb.url, region_name="us-east-1").Table(
        "ChatSessions"
    )
    slow = "two [offline:slow=0.02]"

    def stored() -> list[str]:
        items = table.query(
            KeyConditionExpression=Key("session_id").eq(session["sessionId"]), ConsistentRead=True
        )["Items"]
        return [str(i.get("user_message")) for i in items]

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answering = pool.submit(client.say, slow)
        wait_until(lambda: slow in stored(), "the second message stored")
        live.dynamodb.stop()
        frames = answering.result(timeout=120)
    live.dynamodb.start()
    live.wait_for_reset()

    assert "not_remembered" in [f.get("code") for f in frames if f["type"] == "notice"], frames
    following = client.say("three")
    assert following[-1]["type"] == "done", following
