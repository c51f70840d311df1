"""The write-through cache on a real Redis Cluster, as ElastiCache Serverless serves it.

A redis-server in cluster mode owning all 16384 slots (one node), reached through the client
``CACHE__CLUSTER=true`` builds: a ``RedisCluster`` made on first use, authenticating as a
cache user whose password comes from Secrets Manager (moto).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pybreaker
import pytest
import redis
from chatmemory.llm.anthropic_model import build_chat_model
from chatmemory.memory.state import MemoryState
from chatmemory.services import Services, redis_client
from chatmemory.storage.bindings import Binding
from chatmemory.storage.cached_copy import Copy, VersionedCopies
from chatmemory.storage.keys import state_key, turns_key
from chatmemory.storage.redis_client import LazyCluster
from chatmemory.storage.turn_cache import TurnCache
from redis.cluster import RedisCluster

from tests.conftest import make_settings
from tests.support.processes import RedisProcess
from tests.support.waiting import wait_for_probes

NOW = int(time.time())
USER, PASSWORD, SECRET = "chat", "cache-user-password", "chat-memory/cache-password"
ENDPOINT = "https://abc123def4.execute-api.us-east-1.amazonaws.com/prod"


@pytest.fixture(scope="module")
def node() -> Iterator[RedisProcess]:
    extra = ("--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all")
    with RedisProcess(cluster=True, extra_args=extra) as proc:
        yield proc


@pytest.fixture
def cluster(node: RedisProcess, aws: Any) -> Iterator[RedisProcess]:
    """The node, emptied, and the cache user's password in (moto's) Secrets Manager."""
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(Name=SECRET, SecretString=PASSWORD)
    admin = redis.Redis.from_url(node.url)
    admin.flushall()
    yield node
    if node.running():
        admin.flushall()


def cluster_settings(url: str, **overrides: Any) -> Any:
    cache = {"redis_url": url, "cluster": True, "username": USER, "password_secret_name": SECRET}
    return make_settings(url, cache=cache, **overrides)


def turn(n: int, session: str) -> Any:
    from chatmemory.turns import Turn

    return Turn(
        session_id=session,
        turn=n,
        user=f"u{n}",
        assistant=f"a{n}",
        status="complete",
        at=NOW,
        expires_at=NOW + 3600,
    )


def test_the_cluster_client_is_built_on_first_use_and_authenticates_with_the_secret(
    cluster: RedisProcess,
) -> None:
    client = redis_client(cluster_settings(cluster.url))
    assert client is not None
    assert client.execute_command("ACL", "WHOAMI") == b"chat"
    assert isinstance(client, LazyCluster) and isinstance(client.client(), RedisCluster)


def test_a_wrong_password_is_a_redis_fault(cluster: RedisProcess) -> None:
    boto3.client("secretsmanager", region_name="us-east-1").put_secret_value(
        SecretId=SECRET, SecretString="not-the-password"
    )
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    client = redis_client(cluster_settings(cluster.url))
    assert client is not None
    with pytest.raises(redis.RedisError):
        client.get("chat:{s}:turns")
    parameters.clear_caches()


def test_turn_cache_on_the_cluster_serves_trims_and_forgets(cluster: RedisProcess) -> None:
    client = redis_client(cluster_settings(cluster.url))
    assert client is not None
    cache = TurnCache(client, window=3, ttl_seconds=60)
    cache.fill("s-1", [turn(1, "s-1"), turn(2, "s-1")])
    assert [t.turn for t in cache.window("s-1", NOW) or []] == [1, 2]
    for n in range(3, 6):
        cache.append("s-1", turn(n, "s-1"), first_turn=False)
    assert [t.turn for t in cache.window("s-1", NOW) or []] == [3, 4, 5]
    assert 0 < client.ttl(turns_key("s-1")) <= 60

    # a hole is never served; an absent list is not created by a later turn
    cache.append("s-1", turn(7, "s-1"), first_turn=False)
    assert cache.window("s-1", NOW) is None
    cache.append("s-2", turn(4, "s-2"), first_turn=False)
    assert cache.window("s-2", NOW) is None

    # the memory state beside the turns (a versioned copy: its script runs on the cluster), and
    # both forgotten by one MULTI on one slot: the turns dropped, the state a tombstone
    cache.fill("s-3", [turn(1, "s-3")])
    states = VersionedCopies(client, MemoryState, ttl_seconds=60)
    assert states.put(state_key("s-3"), 2, MemoryState(summary="two", version=2)) is True
    assert states.put(state_key("s-3"), 1, MemoryState(summary="one", version=1)) is False
    assert states.get(state_key("s-3")) == Copy(2, MemoryState(summary="two", version=2))
    cache.forget("s-3")
    assert client.exists(turns_key("s-3")) == 0
    erased = states.get(state_key("s-3"))
    assert erased is not None and erased.value is None
    assert states.put(state_key("s-3"), 3, MemoryState(summary="stale", version=3)) is False


def test_the_write_through_is_one_transaction_on_one_slot(cluster: RedisProcess) -> None:
    """What the node executes for one appended turn: MULTI, the list commands, EXEC."""
    client = redis_client(cluster_settings(cluster.url))
    assert client is not None
    cache = TurnCache(client, window=3, ttl_seconds=60)
    cache.fill("s-4", [turn(1, "s-4")])
    seen: list[str] = []
    with redis.Redis.from_url(cluster.url).monitor() as monitor:
        writer = threading.Thread(target=cache.append, args=("s-4", turn(2, "s-4"), False))
        writer.start()
        while not seen or seen[-1] != "EXEC":
            command = monitor.next_command()["command"].split()[0].upper()
            if command not in ("AUTH", "HELLO", "CLIENT", "PING", "READONLY", "CLUSTER", "COMMAND"):
                seen.append(command)
        writer.join()
    assert seen == ["MULTI", "RPUSHX", "LTRIM", "EXPIRE", "EXEC"]


def conversation_services(cluster: RedisProcess, aws: Any) -> Services:
    settings = cluster_settings(cluster.url, breaker={"fail_max": 2, "reset_timeout_seconds": 0.5})
    return Services(settings, aws, redis_client(settings), build_chat_model(settings.llm, None))


def say(services: Services, session: str, text: str) -> None:
    binding = Binding(connection_id=f"c-{session}", session_id=session, principal="p", connected_at=NOW)
    services.conversation(ENDPOINT).send_message(binding, text, None)


def test_a_conversation_reads_its_window_from_the_cluster(cluster: RedisProcess, aws: Any) -> None:
    services = conversation_services(cluster, aws)
    for n in range(1, 4):
        say(services, "s-5", f"message {n}")
    cached = redis.Redis.from_url(cluster.url).lrange(turns_key("s-5"), 0, -1)
    assert len(cached) == 3
    # DynamoDB gone: the history still comes, from the cluster
    aws.Table("ChatSessions").delete()
    assert [t.user for t in services.memory.load("s-5").turns] == [f"message {n}" for n in (1, 2, 3)]


def test_an_unreachable_cluster_degrades_to_dynamodb_and_recovers(cluster: RedisProcess, aws: Any) -> None:
    cluster.kill()
    try:
        services = conversation_services(cluster, aws)  # a cold start while the cache is down
        for n in range(1, 4):
            say(services, "s-6", f"message {n}")
        assert services.breakers.redis.current_state == pybreaker.STATE_OPEN
        assert [t.user for t in services.memory.load("s-6").turns] == [f"message {n}" for n in (1, 2, 3)]
    finally:
        cluster.start()
    wait_for_probes(services.breakers.redis)  # its reset timeout ran out: the next call probes
    say(services, "s-6", "message 4")
    assert services.breakers.redis.current_state == pybreaker.STATE_CLOSED
    assert [t.user for t in services.memory.load("s-6").turns][-1] == "message 4"
    assert redis.Redis.from_url(cluster.url).exists(turns_key("s-6")) == 1


def test_a_cluster_lost_mid_conversation_changes_nothing_the_user_sees(
    cluster: RedisProcess, aws: Any
) -> None:
    """Once built, the cluster client reports a lost node as RedisClusterException (not a
    RedisError): still a Redis fault, the turn goes on with DynamoDB."""
    services = conversation_services(cluster, aws)
    say(services, "s-7", "message 1")
    cluster.kill()
    try:
        for n in range(2, 5):
            say(services, "s-7", f"message {n}")
        assert services.breakers.redis.current_state == pybreaker.STATE_OPEN
        assert [t.user for t in services.memory.load("s-7").turns] == [f"message {n}" for n in range(1, 5)]
    finally:
        cluster.start()
