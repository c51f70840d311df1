"""``python -m local.moto_server`` (the load run's moto, without moto's whole-table Query and
transaction costs) answers exactly as stock moto does: the same writes to both, then the same
Queries and transactions, compared item for item. The patched server runs in its own process
(its patches are process-wide); stock moto runs in this one."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from local.stack import free_port
from tests.e2e.conftest import ROOT
from tests.support.waiting import wait_until

TURNS, CONNECTIONS = "Turns", "Connections"


def _resource(url: str) -> Any:
    return boto3.resource(
        "dynamodb",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def _wait(port: int) -> None:
    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(listening, f"a server on port {port}", interval=0.1)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Any, Any]]:
    """(stock, patched) DynamoDB resources holding the same items."""
    stock = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    stock.start()
    port = free_port()
    patched = subprocess.Popen(
        [sys.executable, "-m", "local.moto_server", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(port)
        resources = (_resource(f"http://127.0.0.1:{stock._port}"), _resource(f"http://127.0.0.1:{port}"))
        for ddb in resources:
            ddb.create_table(
                TableName=TURNS,
                KeySchema=[
                    {"AttributeName": "session_id", "KeyType": "HASH"},
                    {"AttributeName": "turn_number", "KeyType": "RANGE"},
                ],
                AttributeDefinitions=[
                    {"AttributeName": "session_id", "AttributeType": "S"},
                    {"AttributeName": "turn_number", "AttributeType": "N"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
            ddb.create_table(
                TableName=CONNECTIONS,
                KeySchema=[{"AttributeName": "connection_id", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "connection_id", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            turns = ddb.Table(TURNS)
            # Written out of order, across partitions, so a sort that ignored the partition shows.
            for number in (3, 1, 7, 2, 5, 0, 4, 6):
                for session in ("b", "a", "c"):
                    turns.put_item(
                        Item={
                            "session_id": session,
                            "turn_number": number,
                            "text": f"{session}{number}",
                            "ttl": 100 + number,
                        }
                    )
            ddb.Table(CONNECTIONS).put_item(Item={"connection_id": "c1", "session_id": "a"})
        yield resources
    finally:
        patched.terminate()
        patched.wait(timeout=30)
        stock.stop()


QUERIES: list[dict[str, Any]] = [
    {"KeyConditionExpression": Key("session_id").eq("a")},
    {"KeyConditionExpression": Key("session_id").eq("b") & Key("turn_number").gt(0), "ConsistentRead": True},
    {
        "KeyConditionExpression": Key("session_id").eq("c") & Key("turn_number").gt(0),
        "ProjectionExpression": "turn_number",
        "ScanIndexForward": False,
        "Limit": 1,
    },
    {
        "KeyConditionExpression": Key("session_id").eq("a") & Key("turn_number").between(2, 6),
        "FilterExpression": Attr("ttl").gt(103),
        "ScanIndexForward": False,
        "Limit": 3,
    },
    {
        "KeyConditionExpression": Key("session_id").eq("a"),
        "Limit": 3,
        "ExclusiveStartKey": {"session_id": "a", "turn_number": 2},
    },
    {"KeyConditionExpression": Key("session_id").eq("nobody")},
]


@pytest.mark.parametrize("query", QUERIES)
def test_a_query_answers_as_stock_moto_does(servers: tuple[Any, Any], query: dict[str, Any]) -> None:
    stock, patched = servers
    expected = stock.Table(TURNS).query(**query)
    answered = patched.Table(TURNS).query(**query)
    for field in ("Items", "Count", "ScannedCount", "LastEvaluatedKey"):
        assert answered.get(field) == expected.get(field), field


def _cancelled_transaction(ddb: Any) -> None:
    """A new item, an update and a delete, then a condition that fails: nothing may stay."""
    with pytest.raises(ClientError) as raised:
        ddb.meta.client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": TURNS, "Item": {"session_id": "a", "turn_number": 99, "text": "new"}}},
                {
                    "Update": {
                        "TableName": TURNS,
                        "Key": {"session_id": "b", "turn_number": 0},
                        "UpdateExpression": "SET summary = :s",
                        "ExpressionAttributeValues": {":s": "changed"},
                    }
                },
                {"Delete": {"TableName": CONNECTIONS, "Key": {"connection_id": "c1"}}},
                {
                    "ConditionCheck": {
                        "TableName": TURNS,
                        "Key": {"session_id": "c", "turn_number": 42},
                        "ConditionExpression": "attribute_exists(turn_number)",
                    }
                },
            ]
        )
    assert raised.value.response["Error"]["Code"] == "TransactionCanceledException"


def _everything(ddb: Any) -> tuple[list[Any], list[Any]]:
    turns = sorted(ddb.Table(TURNS).scan()["Items"], key=lambda i: (i["session_id"], i["turn_number"]))
    connections = ddb.Table(CONNECTIONS).scan()["Items"]
    return turns, connections


def test_a_cancelled_transaction_leaves_every_item_as_it_was(servers: tuple[Any, Any]) -> None:
    stock, patched = servers
    before = _everything(patched)
    assert before == _everything(stock)
    for ddb in servers:
        _cancelled_transaction(ddb)
    assert _everything(patched) == before == _everything(stock)


def test_a_transaction_that_succeeds_writes_as_stock_moto_does(servers: tuple[Any, Any]) -> None:
    for ddb in servers:
        ddb.meta.client.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": TURNS,
                        "Key": {"session_id": "c", "turn_number": 0},
                        "UpdateExpression": "SET summary = :s",
                        "ConditionExpression": "attribute_not_exists(summary)",
                        "ExpressionAttributeValues": {":s": "kept"},
                    }
                },
                {
                    "ConditionCheck": {
                        "TableName": TURNS,
                        "Key": {"session_id": "c", "turn_number": 7},
                        "ConditionExpression": "attribute_exists(turn_number)",
                    }
                },
            ]
        )
    stock, patched = servers
    assert _everything(patched) == _everything(stock)
    assert (
        patched.Table(TURNS).get_item(Key={"session_id": "c", "turn_number": 0})["Item"]["summary"] == "kept"
    )
