"""The table's vector index (``by_owner_vector``, template.yaml) over turn items: the only code
that speaks DynamoDB for it. A turn is in the index once it carries ``owner`` (its search key,
``chatmemory.memory.crosssession.owner_value``) and ``fvec`` (its embedding, float32 numbers)."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError

from chatmemory.embeddings import Vectors

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table

OWNER = "owner"
VECTOR = "fvec"
INDEX = "by_owner_vector"
MAX_TOP_K = 100  # SearchVectors' limit


class VectorIndexStore:
    """The only code that speaks DynamoDB for the vector index: the two attributes it reads
    on turn items, and ``SearchVectors``."""

    def __init__(self, table: Table, index: str = INDEX) -> None:
        self._table, self._index = table, index

    def candidates(self, session_id: str, first: int, last: int) -> list[dict[str, Any]]:
        """Turns ``first..last`` as the indexer needs them: number, principal, status, when,
        the compact vector (``vec``) and the owner it is indexed under, if any."""
        response = self._table.query(
            KeyConditionExpression=Key("session_id").eq(session_id) & Key("turn_number").between(first, last),
            ProjectionExpression="turn_number, principal, #s, created_at, vec, #o",
            ExpressionAttributeNames={"#s": "status", "#o": OWNER},
            ConsistentRead=True,
        )
        return [dict(item) for item in response["Items"]]

    def tag(self, session_id: str, turn: int, principal: str, owner: str, vector: Vectors) -> None:
        """Put a turn in the index, if it is still there and still ``principal``'s."""
        try:
            self._table.update_item(
                Key={"session_id": session_id, "turn_number": turn},
                UpdateExpression="SET #o = :o, #v = :v",
                ConditionExpression=Attr("session_id").exists() & Attr("principal").eq(principal),
                ExpressionAttributeNames={"#o": OWNER, "#v": VECTOR},
                ExpressionAttributeValues={":o": owner, ":v": _numbers(vector)},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise  # else: erased meanwhile, nothing to index

    def search(self, owner: str, vector: Vectors, top_k: int) -> list[tuple[dict[str, Any], float]]:
        """The ``top_k`` nearest turns indexed under ``owner``, nearest first, with their
        COSINE scores (0 is identical)."""
        # The resource's client serializes plain Python values, as the table does.
        response = self._table.meta.client.search_vectors(
            TableName=self._table.name,
            IndexName=self._index,
            SearchVector=_numbers(vector),
            SearchConditionExpression="#o = :o",
            ExpressionAttributeNames={"#o": OWNER},
            ExpressionAttributeValues={":o": owner},
            TopK=top_k,
        )
        return [(dict(hit["Item"]), float(hit["Score"])) for hit in response.get("SearchResults", [])]


def _numbers(vector: Vectors) -> list[Decimal]:
    return [Decimal(f"{float(x):.7g}") for x in vector]  # float32 holds about 7 digits
