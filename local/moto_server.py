"""``python -m local.moto_server PORT``: moto's server for the load run, without two costs of
moto that grow with the whole table and that DynamoDB does not have.

moto (5.x) answers a Query on a table by sorting *every* item of the table and keeping the
partition's, and a TransactWriteItems by deep-copying every table it names, once per item of
the transaction, to roll back from. At the end of a 500 x 20 load run (about 10,500 items) that
is about 0.1 s for one Query and 0.5 s for one two-item transaction, of CPU under moto's one
GIL, which every other request waits for.

Here, and only here (tests keep moto's own code, made safe for concurrent requests by
``local.moto_isolation`` as everywhere):

* a Query on the table itself (not an index) takes its candidates from the partition it names.
  moto's own code then filters, sorts, pages and projects them as before, so the answer is the
  same;
* a transaction remembers the items it names (their copies, or that they were absent) instead
  of copying the tables, and a cancelled one puts exactly those back.

Everything else (conditions, updates, the stored items the load run verifies) is moto's.
Request logging is off: the load run's moto answered about 120,000 requests.
"""

from __future__ import annotations

import copy
import logging
import signal
import sys
import threading
import types
from typing import Any

import moto.dynamodb.models as dynamodb_models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table
from moto.server import ThreadedMotoServer

import local.moto_isolation  # one request at a time: moto is not thread-safe
import local.vector_search  # noqa: F401  (SearchVectors, which moto lacks)

_query_partition = threading.local()
_stock_all_items = Table.all_items
_stock_query = Table.query
_stock_transact = DynamoDBBackend.transact_write_items


def _all_items(self: Table) -> list[Item]:
    wanted = getattr(_query_partition, "key", None)
    if wanted is None or wanted[0] is not self:
        return _stock_all_items(self)
    partition = self.items.get(wanted[1])
    if partition is None:
        return []
    return list(partition.values()) if self.range_key_attr else [partition]


def _query(self: Table, hash_key: DynamoType | None, *args: Any, **kwargs: Any) -> Any:
    if kwargs.get("index_name") is not None or hash_key is None:
        return _stock_query(self, hash_key, *args, **kwargs)
    _query_partition.key = (self, hash_key)
    try:
        return _stock_query(self, hash_key, *args, **kwargs)
    finally:
        _query_partition.key = None


def _deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """moto's module-level ``copy.deepcopy``, except that a table is not copied (the
    transaction below keeps what it needs to roll back instead)."""
    if isinstance(value, Table):
        return value
    return copy.deepcopy(value, memo)


def _key_of(table: Table, op_type: str, op: dict[str, Any]) -> tuple[DynamoType, DynamoType | None]:
    attrs = op["Item"] if op_type == "Put" else op["Key"]
    hash_key = DynamoType(attrs[table.hash_key_attr])
    range_key = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
    return hash_key, range_key


def _transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    saved: list[tuple[Table, DynamoType, DynamoType | None, Item | None]] = []
    for entry in transact_items:
        if len(entry) != 1:
            break  # moto rejects it before writing anything
        op_type, op = next(iter(entry.items()))
        table = self.tables.get(op.get("TableName", ""))
        if table is None or op_type not in ("Put", "Update", "Delete", "ConditionCheck"):
            continue
        try:
            hash_key, range_key = _key_of(table, op_type, op)
        except KeyError:
            continue  # moto answers a validation error, having written nothing
        current = table.get_item(hash_key, range_key)
        saved.append((table, hash_key, range_key, copy.deepcopy(current)))
    try:
        _stock_transact(self, transact_items)
    except Exception:
        for table, hash_key, range_key, item in reversed(saved):
            if range_key is None:
                if item is None:
                    table.items.pop(hash_key, None)
                else:
                    table.items[hash_key] = item  # type: ignore[assignment]
            elif item is None:
                table.items.get(hash_key, {}).pop(range_key, None)
            else:
                table.items[hash_key][range_key] = item
        raise


def install() -> None:
    """Patch moto in this process (the load run's moto server only)."""
    Table.all_items = _all_items  # type: ignore[method-assign]
    Table.query = _query  # type: ignore[method-assign]
    DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]
    shim = types.ModuleType("copy")
    shim.__dict__.update(copy.__dict__)
    shim.deepcopy = _deepcopy  # type: ignore[attr-defined]
    dynamodb_models.copy = shim  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    port = int(args[0]) if args else 5000
    install()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
