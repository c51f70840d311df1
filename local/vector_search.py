"""DynamoDB vector indexes and ``SearchVectors`` for moto, which has neither.

Importing this module registers them on moto's DynamoDB, behind the same HTTP surface as the
rest of it, so in-process ``mock_aws`` and the local stack's moto server both answer:

* ``CreateTable`` keeps its ``VectorIndexes`` (their search-schema attributes declared in
  ``AttributeDefinitions``, as DynamoDB requires), and ``DescribeTable`` reports them ACTIVE;
* ``SearchVectors`` is an exact (brute-force) search of the table's items: those whose vector
  attribute is a list of numbers of the index's dimensions and which hold every HASH and inline
  filter attribute of the search schema. Scores as the API reference gives them: COSINE is
  ``1 - cosine`` (0 identical, 2 opposite) and EUCLIDEAN the distance, smallest first;
  DOT_PRODUCT the product, largest first. Vectors are compared at float32, as the index stores
  them.

Errors follow the developer guide's troubleshooting table: ``ResourceNotFoundException`` for an
unknown table, ``ValidationException`` for an unknown index, a missing HASH condition, an
operator other than ``=``, a TopK outside 1-100, a search vector of the wrong dimensions, and
a PutItem or UpdateItem whose vector attribute is not a list of numbers of the index's
dimensions (the item is left as it was).

Not emulated: approximate search (DynamoDB's is ANN: this one is exact), index backfilling,
capacity beyond a byte count, and the write check on batch and transactional writes.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np
from moto.backend_index import backend_url_patterns
from moto.dynamodb import urls as dynamodb_urls
from moto.dynamodb.exceptions import MockValidationException
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler, DynamoResult

# SearchVectors' own endpoints (botocore routes it there unless an endpoint_url is given).
SEARCH_URL_BASES = [
    r"https?://search-dynamodb\.(.+)\.amazonaws\.com",
    r"https?://(.+)\.search-ddb\.(.+)\.amazonaws\.com",
]
MAX_TOP_K = 100
MAX_DIMENSIONS = 4096
_NAME = re.compile(r"^[a-zA-Z0-9_.-]{3,255}$")
_CONDITION = re.compile(r"^\s*(#?[A-Za-z0-9_]+)\s*(=|<>|<=|>=|<|>)\s*(:[A-Za-z0-9_]+)\s*$")

_stock_create_table = DynamoHandler.create_table
_stock_describe = Table.describe
_stock_put_item = DynamoDBBackend.put_item
_stock_update_item = DynamoDBBackend.update_item


def _invalid(message: str) -> MockValidationException:
    return MockValidationException(message)


def _check_index(index: dict[str, Any], declared: set[str]) -> None:
    name = str(index.get("IndexName", ""))
    if not _NAME.match(name):
        raise _invalid(f"Invalid vector index name: {name}")
    dimensions = int(index.get("Dimensions", 0))
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise _invalid(f"Dimensions must be between 1 and {MAX_DIMENSIONS} for vector index {name}")
    schema = index.get("SearchSchema") or []
    if any(e["AttributeName"] not in declared for e in schema):
        raise _invalid("One element in SearchSchema is not defined in attribute definitions")
    if sum(e["SearchSchemaElementType"] == "HASH" for e in schema) > 1:
        raise _invalid(f"A SearchSchema has at most one HASH element (vector index {name})")


def _create_table(self: DynamoHandler) -> Any:
    indexes: list[dict[str, Any]] = list(self.body.pop("VectorIndexes", None) or [])
    declared = list(self.body.get("AttributeDefinitions", []))
    names = {a["AttributeName"] for a in declared}
    for index in indexes:
        _check_index(index, names)
    if len({i["IndexName"] for i in indexes}) < len(indexes):
        raise _invalid("Duplicate vector index name")
    if indexes and self.body.get("BillingMode") != "PAY_PER_REQUEST":
        raise _invalid("Vector indexes require on-demand capacity mode (PAY_PER_REQUEST)")
    # moto wants exactly the key attributes declared; DynamoDB also wants the search schema's.
    searched = {e["AttributeName"] for i in indexes for e in i.get("SearchSchema") or []}
    keys = {k["AttributeName"] for k in self.body["KeySchema"]}
    for gsi in [*self.body.get("GlobalSecondaryIndexes", []), *self.body.get("LocalSecondaryIndexes", [])]:
        keys.update(k["AttributeName"] for k in gsi["KeySchema"])
    self.body["AttributeDefinitions"] = [a for a in declared if a["AttributeName"] not in searched - keys]
    _stock_create_table(self)
    table = self.dynamodb_backend.get_table(self.body["TableName"])
    table.attr = declared
    table.vector_indexes = indexes  # type: ignore[attr-defined]
    return DynamoResult(table.describe())


def _describe(self: Table, base_key: str = "TableDescription") -> dict[str, Any]:
    result = _stock_describe(self, base_key)
    indexes = getattr(self, "vector_indexes", None)
    if indexes:
        result[base_key]["VectorIndexes"] = [
            {
                **index,
                "IndexStatus": "ACTIVE",
                "Backfilling": False,
                "IndexArn": f"{self.table_arn}/index/{index['IndexName']}",
                "ItemCount": sum(1 for _ in _indexed(self, index)),
            }
            for index in indexes
        ]
    return result


def _vector(value: Any, dimensions: int) -> np.ndarray | None:
    """An attribute as a float32 vector of ``dimensions``, or ``None`` (not indexed)."""
    if not isinstance(value, dict) or set(value) != {"L"} or len(value["L"]) != dimensions:
        return None
    if any(not isinstance(e, dict) or set(e) != {"N"} for e in value["L"]):
        return None
    return np.array([float(e["N"]) for e in value["L"]], dtype=np.float32)


def _indexed(table: Table, index: dict[str, Any]) -> Any:
    """The table's items in this index: a valid vector and every search-schema attribute."""
    attribute = index["VectorAttribute"]["AttributeName"]
    schema = [e["AttributeName"] for e in index.get("SearchSchema") or []]
    for item in table.all_items():
        attrs = item.to_json()["Attributes"]
        vector = _vector(attrs.get(attribute), int(index["Dimensions"]))
        if vector is not None and all(name in attrs for name in schema):
            yield attrs, vector


def _conditions(body: dict[str, Any], index: dict[str, Any]) -> dict[str, Any]:
    """``SearchConditionExpression`` as attribute -> value: ``=`` on search-schema attributes,
    joined by AND; the HASH attribute must be among them."""
    names: dict[str, str] = body.get("ExpressionAttributeNames") or {}
    values: dict[str, Any] = body.get("ExpressionAttributeValues") or {}
    schema = {e["AttributeName"]: e["SearchSchemaElementType"] for e in index.get("SearchSchema") or []}
    expression = body.get("SearchConditionExpression")
    wanted: dict[str, Any] = {}
    for clause in re.split(r"\s+AND\s+", expression, flags=re.I) if expression else []:
        match = _CONDITION.match(clause)
        if match is None:
            raise _invalid(f"Invalid SearchConditionExpression: {expression}")
        token, operator, placeholder = match.groups()
        if operator != "=":
            raise _invalid("Invalid comparator used in SearchConditionExpression")
        name = names.get(token) if token.startswith("#") else token
        if name is None:
            raise _invalid(f"An expression attribute name used in the expression is not defined: {token}")
        if placeholder not in values:
            raise _invalid(f"An expression attribute value used in expression is not defined: {placeholder}")
        if name not in schema:
            raise _invalid(f"Attribute {name} in SearchConditionExpression is not in the search schema")
        wanted[name] = values[placeholder]
    hashes = [name for name, kind in schema.items() if kind == "HASH"]
    if hashes and hashes[0] not in wanted:
        raise _invalid("SearchConditionExpression must be provided when SearchSchema has a HASH key")
    return wanted


def _projected(
    table: Table, index: dict[str, Any], attrs: dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    projection = index.get("Projection") or {}
    keep = {k["AttributeName"] for k in table.schema}
    keep.update(e["AttributeName"] for e in index.get("SearchSchema") or [])
    keep.add(index["VectorAttribute"]["AttributeName"])
    if projection.get("ProjectionType") == "INCLUDE":
        keep.update(projection.get("NonKeyAttributes") or [])
    item = (
        attrs if projection.get("ProjectionType") == "ALL" else {k: v for k, v in attrs.items() if k in keep}
    )
    if body.get("ProjectionExpression"):
        names: dict[str, str] = body.get("ExpressionAttributeNames") or {}
        asked = {names.get(p.strip(), p.strip()) for p in body["ProjectionExpression"].split(",")}
        item = {k: v for k, v in item.items() if k in asked}
    return item


def _score(function: str, indexed: np.ndarray, query: np.ndarray) -> float:
    if function == "EUCLIDEAN":
        return float(np.linalg.norm(indexed - query))
    if function == "DOT_PRODUCT":
        return float(indexed @ query)
    norms = float(np.linalg.norm(indexed) * np.linalg.norm(query))
    return 1.0 - (float(indexed @ query) / norms if norms else 0.0)


def search_vectors(self: DynamoHandler) -> DynamoResult:
    body = self.body
    table = self.dynamodb_backend.get_table(body["TableName"])  # ResourceNotFoundException
    index = next(
        (i for i in getattr(table, "vector_indexes", []) if i["IndexName"] == body["IndexName"]), None
    )
    if index is None:
        raise _invalid(f"The table does not have the specified index: {body['IndexName']}")
    top_k = int(body["TopK"])
    if not 1 <= top_k <= MAX_TOP_K:
        raise _invalid("Provided TopK value is out of valid range")
    dimensions = int(index["Dimensions"])
    query = _vector({"L": body["SearchVector"]}, dimensions)
    if query is None:
        raise _invalid(
            f"The search vector must be a list of {dimensions} numbers (index {index['IndexName']})"
        )
    wanted = _conditions(body, index)
    function = index["DistanceFunction"]
    hits = [
        (_score(function, vector, query), attrs)
        for attrs, vector in _indexed(table, index)
        if all(attrs.get(name) == value for name, value in wanted.items())
    ]
    hits.sort(key=lambda hit: -hit[0] if function == "DOT_PRODUCT" else hit[0])
    response: dict[str, Any] = {
        "SearchResults": [
            {"Item": _projected(table, index, attrs, body), "Score": score} for score, attrs in hits[:top_k]
        ]
    }
    if body.get("ReturnConsumedCapacity") in ("TOTAL", "INDEXES"):
        response["ConsumedCapacity"] = {"VectorSearchRequestBytes": float(4 * dimensions)}
    return DynamoResult(response)


def _check_written(table: Table, attrs: dict[str, Any]) -> None:
    """DynamoDB refuses a write whose vector attribute its indexes cannot take."""
    for index in getattr(table, "vector_indexes", []):
        name, dimensions = index["VectorAttribute"]["AttributeName"], int(index["Dimensions"])
        value = attrs.get(name)
        if value is None or _vector(value, dimensions) is not None:
            continue
        if not isinstance(value, dict) or set(value) != {"L"}:
            raise _invalid(
                f"One or more parameter values were invalid: Invalid type for vector attribute {name}"
            )
        raise _invalid(
            f"One or more parameter values were invalid: vector attribute {name} must be a list of"
            f" {dimensions} numbers (index {index['IndexName']})"
        )


def _put_item(
    self: DynamoDBBackend, table_name: str, item_attrs: dict[str, Any], *args: Any, **kwargs: Any
) -> Any:
    _check_written(self.get_table(table_name), item_attrs)
    return _stock_put_item(self, table_name, item_attrs, *args, **kwargs)


def _update_item(
    self: DynamoDBBackend, table_name: str, key: dict[str, Any], *args: Any, **kwargs: Any
) -> Any:
    table = self.get_table(table_name)
    if not getattr(table, "vector_indexes", None):
        return _stock_update_item(self, table_name, key, *args, **kwargs)
    hash_key = DynamoType(key[table.hash_key_attr])
    range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
    before = copy.deepcopy(table.get_item(hash_key, range_key))
    item = _stock_update_item(self, table_name, key, *args, **kwargs)
    try:
        _check_written(table, item.to_json()["Attributes"])
    except MockValidationException:  # put the item back as it was, then refuse
        if range_key is None:
            if before is None:
                table.items.pop(hash_key, None)
            else:
                table.items[hash_key] = before  # type: ignore[assignment]
        elif before is None:
            table.items.get(hash_key, {}).pop(range_key, None)
        else:
            table.items[hash_key][range_key] = before
        raise
    return item


def install() -> None:
    """Register the emulation on moto (idempotent)."""
    if getattr(DynamoHandler, "search_vectors", None) is search_vectors:
        return
    DynamoHandler.create_table = _create_table  # type: ignore[method-assign]
    DynamoHandler.search_vectors = search_vectors  # type: ignore[attr-defined]
    Table.describe = _describe  # type: ignore[method-assign]
    DynamoDBBackend.put_item = _put_item  # type: ignore[method-assign]
    DynamoDBBackend.update_item = _update_item  # type: ignore[method-assign]
    for base in SEARCH_URL_BASES:
        dynamodb_urls.url_bases.append(base)
        backend_url_patterns.insert(0, ("dynamodb", re.compile(base)))


install()
