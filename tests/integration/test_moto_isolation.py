"""moto's DynamoDB, as the tests and the local stack run it, keeps a write that another thread
makes while a transaction is cancelled (stock moto put back its copy of the whole table,
undoing that write: a memory worker's cancelled note lost a user's turn)."""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend

import local.moto_isolation  # noqa: F401  (what the tests and the local stack run)

TABLE = "Items"


def _table() -> Any:
    dynamodb = boto3.resource("dynamodb", region_name="us-east-1")
    return dynamodb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )


def test_a_write_made_during_a_cancelled_transaction_is_kept(monkeypatch: Any) -> None:
    with mock_aws():
        table = _table()
        written = threading.Event()
        writer: list[threading.Thread] = []
        stock_get_table = DynamoDBBackend.get_table

        def write_meanwhile(self: DynamoDBBackend, name: str) -> Any:
            # Inside the transaction, after moto copied the table to roll back to: another
            # request writes. Isolated, it waits for the transaction; it is given a moment to
            # land first (it does, on stock moto), never needed for the test to pass.
            if not writer:
                put = threading.Thread(
                    target=lambda: (table.put_item(Item={"pk": "a", "sk": 2}), written.set())
                )
                writer.append(put)
                put.start()
                written.wait(timeout=2)
            return stock_get_table(self, name)

        monkeypatch.setattr(DynamoDBBackend, "get_table", write_meanwhile)
        cancelled = {
            "ConditionCheck": {
                "TableName": TABLE,
                "Key": {"pk": {"S": "a"}, "sk": {"N": "1"}},
                "ConditionExpression": "attribute_exists(pk)",
            }
        }
        try:
            table.meta.client.transact_write_items(TransactItems=[cancelled])
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "TransactionCanceledException"
        writer[0].join()
        monkeypatch.undo()
        assert "Item" in table.get_item(Key={"pk": "a", "sk": 2})
