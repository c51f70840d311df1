"""A flood from one source on the local stack (loopback only, a dozen connections and messages):
guests beyond the source's allowance get no socket, a principal over its message rate gets
``rate_limited`` and the model is not called for it, other principals keep being answered, and
the counts outlive a Redis restart (DynamoDB holds them too)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import boto3
import pytest
from boto3.dynamodb.conditions import Key
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection

from tests.e2e.conftest import Stack, start_stack, stop_stack
from tests.e2e.test_stack_conversation import open_socket, session_of, turn
from tests.support.processes import RedisProcess
from tests.support.waiting import wait_until

GUESTS = 3  # the burst allowance of the source
MESSAGES = 2  # per principal per window
# Windows far longer than the test, so none closes while it runs.
QUOTAS = {
    "QUOTA__GUESTS_PER_SOURCE_BURST": str(GUESTS),
    "QUOTA__GUEST_BURST_WINDOW_SECONDS": "3600",
    "QUOTA__GUESTS_PER_SOURCE_PER_HOUR": "100",
    "QUOTA__MESSAGES_PER_WINDOW": str(MESSAGES),
    "QUOTA__MESSAGE_WINDOW_SECONDS": "3600",
    # EMF lines in the stack's output: how the test sees each model call (ModelLatency)
    "POWERTOOLS_METRICS_DISABLED": "false",
    "POWERTOOLS_METRICS_NAMESPACE": "ChatMemoryAbuse",
}


@pytest.fixture(scope="module")
def flooded() -> Iterator[tuple[Stack, RedisProcess]]:
    with RedisProcess() as redis_server:
        started = start_stack(extra_env={"REDIS_URL": redis_server.url, **QUOTAS})
        try:
            yield started, redis_server
        finally:
            stop_stack(started.process)


def metric_count(stack: Stack, name: str) -> int:
    """How many handler invocations published ``name`` (one EMF document each: the local
    runtime keeps each invocation's metrics its own, as Lambda does)."""
    count = 0
    for line in stack.caught_up():
        if line.startswith('{"_aws"'):
            count += int(name in json.loads(line))
    return count


def published(stack: Stack, name: str, count: int) -> None:
    """Wait until ``name`` was published ``count`` times; on a timeout, say how often it was
    and what the stack wrote last."""
    try:
        wait_until(lambda: metric_count(stack, name) >= count, f"{name} published {count} times")
    except AssertionError as exc:
        tail = "".join(stack.output[-40:])
        raise AssertionError(
            f"{exc}: {metric_count(stack, name)} times; the stack's last lines:\n{tail}"
        ) from None


def new_guest(stack: Stack, sockets: ExitStack) -> tuple[ClientConnection, dict[str, Any]]:
    ws = sockets.enter_context(open_socket(stack))
    return ws, session_of(ws)


def refused_guest(stack: Stack) -> int:
    with pytest.raises(InvalidStatus) as refused:
        open_socket(stack)
    return refused.value.response.status_code


def stored_messages(stack: Stack, session_id: str) -> list[str]:
    table = boto3.resource("dynamodb", endpoint_url=stack.dynamodb_url, region_name="us-east-1").Table(
        "ChatSessions"
    )
    items = table.query(KeyConditionExpression=Key("session_id").eq(session_id), ConsistentRead=True)["Items"]
    return [str(i["user_message"]) for i in items if "user_message" in i]


def test_a_flood_from_one_source_is_held_to_its_limits_through_a_redis_restart(
    flooded: tuple[Stack, RedisProcess],
) -> None:
    stack, redis_server = flooded
    with ExitStack() as sockets:
        flood_from_one_source(stack, redis_server, sockets)


def flood_from_one_source(stack: Stack, redis_server: RedisProcess, sockets: ExitStack) -> None:
    # Given the source's whole allowance of guests
    guests = [new_guest(stack, sockets) for _ in range(GUESTS)]
    (ada, ada_session), (bob, bob_session) = guests[0], guests[1]
    # When it asks for more, they get no socket (the authorizer's Deny: 403)
    assert [refused_guest(stack) for _ in range(2)] == [403, 403]
    # A returning guest, with its token, is not a new guest and still connects
    with open_socket(stack, ada_session["sessionId"], ada_session["guestToken"]) as again:
        assert "guestToken" not in session_of(again)  # not a new guest: nothing counted

    # Given Ada at her message rate (a handler publishes its metrics when it returns, after done)
    for i in range(MESSAGES):
        assert turn(ada, f"message {i}")[-1]["type"] == "done"
    published(stack, "ModelLatency", MESSAGES)
    assert metric_count(stack, "ModelLatency") == MESSAGES
    # When she floods, every further message is refused with when to retry, before the model
    flood = [turn(ada, f"flood {i}") for i in range(3)]
    assert all([f["type"] for f in frames] == ["error"] for frames in flood), flood
    assert {frames[0]["code"] for frames in flood} == {"rate_limited"}
    assert all(0 < frames[0]["retryAfterSeconds"] <= 3600 for frames in flood)
    # Each refused invocation's metrics came out whole: none of them called the model
    published(stack, "RateLimited", 3)
    assert metric_count(stack, "RateLimited") == 3
    assert metric_count(stack, "ModelLatency") == MESSAGES
    assert stored_messages(stack, ada_session["sessionId"]) == [f"message {i}" for i in range(MESSAGES)]
    # And Bob, another principal of the same source, is still answered
    assert turn(bob, "hello from bob")[-1]["type"] == "done"

    # When Redis goes down, the counts go on in DynamoDB
    redis_server.kill()
    assert turn(ada, "while the cache is down")[0]["code"] == "rate_limited"
    assert refused_guest(stack) == 403
    # And when it comes back empty (a restart without persistence), nobody was reset
    redis_server.start()
    assert turn(ada, "after the restart")[0]["code"] == "rate_limited"
    assert refused_guest(stack) == 403
    assert turn(bob, "bob's second")[-1]["type"] == "done"  # his last one of the window
    assert turn(bob, "bob's third")[0]["code"] == "rate_limited"
    assert stored_messages(stack, ada_session["sessionId"]) == [f"message {i}" for i in range(MESSAGES)]
    assert stored_messages(stack, bob_session["sessionId"]) == ["hello from bob", "bob's second"]
