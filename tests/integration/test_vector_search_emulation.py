"""``local.vector_search``: DynamoDB's vector indexes and SearchVectors on moto, checked against
botocore's service model (the request botocore validates and sends, the response it parses),
in-process and over moto's HTTP server, with the errors the developer guide lists."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError
from botocore.validate import ParamValidator

import local.vector_search  # noqa: F401  (registers the emulation)
from local.template import create_tables
from tests.conftest import TABLE_NAMES, VECTOR_DIMENSIONS
from tests.support.processes import MotoHttpServer

pytestmark = pytest.mark.moto_only("dynalite has no vector indexes (SearchVectors)")
MODEL = botocore.session.get_session().get_service_model("dynamodb")


def valid(operation: str, response: dict[str, Any]) -> None:
    """The parsed response is of the operation's output shape (types and required members)."""
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    report = ParamValidator().validate(body, MODEL.operation_model(operation).output_shape)
    assert not report.has_errors(), report.generate_report()


def unit(i: int, size: int = VECTOR_DIMENSIONS) -> list[dict[str, str]]:
    return [{"N": "1" if j == i else "0"} for j in range(size)]


def put(client: Any, session: str, turn: int, owner: str | None, vector: list[dict[str, str]] | None) -> None:
    item: dict[str, Any] = {"session_id": {"S": session}, "turn_number": {"N": str(turn)}}
    item["user_message"] = {"S": f"{session} turn {turn}"}
    if owner is not None:
        item["owner"] = {"S": owner}
    if vector is not None:
        item["fvec"] = {"L": vector}
    client.put_item(TableName="ChatSessions", Item=item)


def search(client: Any, owner: str | None, vector: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"TableName": "ChatSessions", "IndexName": "by_owner_vector"}
    args.update(SearchVector=vector, TopK=10)
    if owner is not None:
        args.update(
            SearchConditionExpression="#o = :o",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={":o": {"S": owner}},
        )
    args.update(extra)
    return dict(client.search_vectors(**args))


@pytest.fixture
def plain(aws: Any) -> Any:
    return boto3.client("dynamodb", region_name="us-east-1")


@pytest.fixture(params=["in-process", "http"])
def ddb(aws: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A plain client of the template's table: on moto in this process (SearchVectors to its own
    endpoint, search-dynamodb.*), or on moto's HTTP server (SearchVectors to endpoint_url)."""
    if request.param == "in-process":
        yield boto3.client("dynamodb", region_name="us-east-1")
        return
    with MotoHttpServer() as server:
        dynamodb = boto3.resource("dynamodb", endpoint_url=server.url, region_name="us-east-1")
        create_tables(dynamodb, TABLE_NAMES, vector_dimensions=VECTOR_DIMENSIONS)
        yield boto3.client("dynamodb", endpoint_url=server.url, region_name="us-east-1")


def test_describe_table_reports_the_template_s_vector_index_in_botocore_s_shape(ddb: Any) -> None:
    response = ddb.describe_table(TableName="ChatSessions")

    # moto's own part of the table description is not checked (it reports a throughput of 0
    # decreases, under the model's minimum of 1): the vector indexes are the emulation's.
    valid("DescribeTable", {"Table": {"VectorIndexes": response["Table"]["VectorIndexes"]}})
    (index,) = response["Table"]["VectorIndexes"]
    assert index["IndexName"] == "by_owner_vector"
    assert index["Dimensions"] == VECTOR_DIMENSIONS
    assert index["DistanceFunction"] == "COSINE"
    assert index["SearchSchema"] == [{"AttributeName": "owner", "SearchSchemaElementType": "HASH"}]
    assert index["IndexStatus"] == "ACTIVE" and index["Backfilling"] is False
    assert {"AttributeName": "owner", "AttributeType": "S"} in response["Table"]["AttributeDefinitions"]


def test_search_finds_the_owner_s_items_nearest_first_with_cosine_scores(ddb: Any) -> None:
    put(ddb, "a", 1, "alice", unit(0))
    put(ddb, "a", 2, "alice", unit(1))
    put(ddb, "b", 1, "bob", unit(0))  # as near, someone else's
    put(ddb, "a", 3, None, unit(0))  # no owner: not in the index

    response = search(ddb, "alice", unit(0), ReturnConsumedCapacity="TOTAL")

    valid("SearchVectors", response)
    hits = response["SearchResults"]
    assert [(h["Item"]["session_id"]["S"], h["Item"]["turn_number"]["N"]) for h in hits] == [
        ("a", "1"),
        ("a", "2"),
    ]
    assert hits[0]["Score"] == pytest.approx(0.0)  # identical
    assert hits[1]["Score"] == pytest.approx(1.0)  # orthogonal
    assert "user_message" in hits[0]["Item"]  # projected (INCLUDE)
    assert response["ConsumedCapacity"]["VectorSearchRequestBytes"] > 0


def test_top_k_and_the_projection_expression_narrow_the_answer(ddb: Any) -> None:
    for turn in range(1, 6):
        put(ddb, "a", turn, "alice", unit(turn))

    response = search(ddb, "alice", unit(3), TopK=2, ProjectionExpression="turn_number")

    valid("SearchVectors", response)
    assert response["SearchResults"][0]["Item"] == {"turn_number": {"N": "3"}}
    assert len(response["SearchResults"]) == 2


def test_a_resource_client_sends_python_numbers_and_gets_python_values(aws: Any) -> None:
    table = boto3.resource("dynamodb", region_name="us-east-1").Table("ChatSessions")
    table.put_item(
        Item={
            "session_id": "a",
            "turn_number": 1,
            "owner": "alice",
            "fvec": [Decimal(1)] + [Decimal(0)] * (VECTOR_DIMENSIONS - 1),
        }
    )

    response = table.meta.client.search_vectors(
        TableName="ChatSessions",
        IndexName="by_owner_vector",
        SearchVector=[Decimal("0.5")] + [Decimal(0)] * (VECTOR_DIMENSIONS - 1),
        SearchConditionExpression="#o = :o",
        ExpressionAttributeNames={"#o": "owner"},
        ExpressionAttributeValues={":o": "alice"},
        TopK=1,
    )

    (hit,) = response["SearchResults"]
    assert hit["Item"]["turn_number"] == 1 and hit["Score"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"IndexName": "no_such_index"}, "ValidationException", "does not have the specified index"),
        ({"TableName": "NoSuchTable"}, "ResourceNotFoundException", "not found"),
        ({"SearchVector": unit(0, 3)}, "ValidationException", "list of"),
        ({"TopK": 101}, "ValidationException", "TopK"),
        ({"SearchConditionExpression": "#o <> :o"}, "ValidationException", "Invalid comparator"),
    ],
)
def test_mistakes_get_the_errors_dynamodb_gives(
    ddb: Any, change: dict[str, Any], code: str, words: str
) -> None:
    with pytest.raises(ClientError) as raised:
        search(ddb, "alice", unit(0), **change)

    assert raised.value.response["Error"]["Code"] == code
    assert words in raised.value.response["Error"]["Message"]


def test_a_search_without_the_hash_condition_is_refused(ddb: Any) -> None:
    put(ddb, "a", 1, "alice", unit(0))

    with pytest.raises(ClientError) as raised:
        search(ddb, None, unit(0))

    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert "SearchConditionExpression must be provided" in raised.value.response["Error"]["Message"]


def test_a_search_key_not_declared_in_attribute_definitions_is_refused(plain: Any) -> None:
    with pytest.raises(ClientError) as raised:
        plain.create_table(
            TableName="T",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            VectorIndexes=[
                {
                    "IndexName": "v_idx",
                    "VectorAttribute": {"AttributeName": "v"},
                    "Dimensions": 3,
                    "DistanceFunction": "COSINE",
                    "SearchSchema": [{"AttributeName": "owner", "SearchSchemaElementType": "HASH"}],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
        )

    assert "not defined in attribute definitions" in raised.value.response["Error"]["Message"]


@pytest.mark.parametrize(
    "vector",
    [unit(0, VECTOR_DIMENSIONS + 1), [{"S": "1"}] * VECTOR_DIMENSIONS],
    ids=["wrong dimensions", "not numbers"],
)
def test_a_write_whose_vector_the_index_cannot_take_is_refused_and_changes_nothing(
    ddb: Any, vector: list[dict[str, str]]
) -> None:
    put(ddb, "a", 1, "alice", unit(0))

    with pytest.raises(ClientError) as put_refused:
        put(ddb, "a", 2, "alice", vector)
    with pytest.raises(ClientError) as update_refused:
        ddb.update_item(
            TableName="ChatSessions",
            Key={"session_id": {"S": "a"}, "turn_number": {"N": "1"}},
            UpdateExpression="SET fvec = :v",
            ExpressionAttributeValues={":v": {"L": vector}},
        )

    for refused in (put_refused, update_refused):
        assert refused.value.response["Error"]["Code"] == "ValidationException"
    key = {"session_id": {"S": "a"}, "turn_number": {"N": "1"}}
    assert ddb.get_item(TableName="ChatSessions", Key=key)["Item"]["fvec"] == {"L": unit(0)}
    assert "Item" not in ddb.get_item(TableName="ChatSessions", Key={**key, "turn_number": {"N": "2"}})
