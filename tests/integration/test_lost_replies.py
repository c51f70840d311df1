"""A write that reached DynamoDB though its reply was lost: botocore retries it, and the retry
must not take the first attempt's item for another writer's (the turn would go unanswered, or
the outbox would store it twice). Real servers behind the fault proxy, which lets requests
through and loses the replies."""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from boto3.dynamodb.conditions import Key
from botocore.config import Config
from chatmemory.errors import TurnConflict
from chatmemory.storage.turns import TurnStore
from chatmemory.turns import Turn

from local.template import create_tables
from tests.conftest import TABLE_NAMES, fresh_dynalite_tables
from tests.support.faults import ProxyThread
from tests.support.processes import DynaliteProcess, MotoHttpServer
from tests.support.waiting import wait_until

# moto's state is this process's, shared by every server started in it: a session per test run.
SESSION = f"lost-replies-{uuid.uuid4()}"


@pytest.fixture(params=["moto", "dynalite"])
def server_table(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """A DynamoDB server's URL and its ChatSessions table, read directly (not through the proxy)."""
    if request.param == "moto":
        with MotoHttpServer() as moto:
            dynamodb = boto3.resource("dynamodb", region_name="us-east-1", endpoint_url=moto.url)
            create_tables(dynamodb, TABLE_NAMES)
            yield moto.url, dynamodb.Table("ChatSessions")
    else:
        if request.node.get_closest_marker("moto_only"):
            pytest.skip("moto only: dynalite predates ReturnValuesOnConditionCheckFailure (2023)")
        dynalite: DynaliteProcess = request.getfixturevalue("dynalite")
        yield dynalite.url, fresh_dynalite_tables(dynalite).Table("ChatSessions")


def _turn(number: int, message: str) -> Turn:
    return Turn(session_id=SESSION, turn=number, user=message, at=1_000, expires_at=2_000_000_000)


def _stored(table: Any) -> list[dict[str, Any]]:
    page = table.query(KeyConditionExpression=Key("session_id").eq(SESSION), ConsistentRead=True)
    return list(page["Items"])


def _store_through(proxy: ProxyThread) -> TurnStore:
    retrying = Config(connect_timeout=2, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
    dynamodb = boto3.resource("dynamodb", region_name="us-east-1", endpoint_url=proxy.url, config=retrying)
    return TurnStore(dynamodb.Table("ChatSessions"))


@pytest.mark.moto_only("dynalite predates ReturnValuesOnConditionCheckFailure")
def test_a_put_whose_reply_was_lost_is_not_its_own_conflict(server_table: tuple[str, Any]) -> None:
    url, table = server_table
    with ProxyThread(url) as proxy, concurrent.futures.ThreadPoolExecutor(1) as pool:
        store = _store_through(proxy)
        proxy.set_mode("lose_replies")
        put = pool.submit(store.put_user_message, _turn(1, "hello"))
        wait_until(lambda: _stored(table), "the first attempt's item in DynamoDB")
        # The reply is lost: the connection drops, and botocore retries the same request.
        proxy.set_mode("pass")
        put.result(timeout=60)  # no TurnConflict
    assert [(int(i["turn_number"]), i["user_message"]) for i in _stored(table)] == [(1, "hello")]


def test_another_writers_turn_is_still_a_conflict(server_table: tuple[str, Any]) -> None:
    url, table = server_table
    with ProxyThread(url) as proxy:
        store = _store_through(proxy)
        store.put_user_message(_turn(7, "first writer"))
        with pytest.raises(TurnConflict):
            store.put_user_message(_turn(7, "second writer"))
    assert [i["user_message"] for i in _stored(table) if i["turn_number"] == 7] == ["first writer"]
