"""moto's DynamoDB answering one request at a time, as the items DynamoDB serves stay isolated.

moto (5.x) is not safe under concurrent requests, which a memory worker thread beside the
turn makes (tests, the local stack): a ``TransactWriteItems`` deep-copies every table it names
before it runs and, when it is cancelled (a condition fails: an everyday answer), puts the
copies back, undoing every write another thread made meanwhile. Seen as a user's turn gone
after the worker's expiry note was cancelled, a forgotten fact back after a cancelled
transaction, a summary set back to an older block; the copy itself also fails now and then
with "dictionary changed size during iteration". DynamoDB's transactions are serializable and
never touch an item they do not name.

Importing this module makes every DynamoDB request moto handles in this process (in-process
``mock_aws`` and ``ThreadedMotoServer`` alike) run under one lock, so a transaction and its
rollback are atomic with respect to every other request. moto holds the GIL for a request's
whole work anyway, so little concurrency is lost.
"""

from __future__ import annotations

import threading
from typing import Any

from moto.dynamodb.responses import DynamoHandler

REQUESTS = threading.RLock()
_stock_call_action = DynamoHandler.call_action


def _call_action(self: DynamoHandler) -> Any:
    with REQUESTS:
        return _stock_call_action(self)


def install() -> None:
    if DynamoHandler.call_action is not _call_action:
        DynamoHandler.call_action = _call_action  # type: ignore[method-assign]


install()
