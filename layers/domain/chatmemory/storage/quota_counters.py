"""Quota counters: fixed windows that open at their first count, in Redis (one MULTI: the
window's key made with its expiry if absent, then incremented) and in DynamoDB (an atomic
UpdateItem on an item of ``ChatSessions`` under its own partition, ``quota#...``, expiring by
TTL): the only code that speaks either store for them. Each count is the larger of the two
(``chatmemory.quotas`` decides with it)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatmemory.breakers import Breakers, StoreFault

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table

    from chatmemory.storage.redis_client import CacheClient

PARTITION_PREFIX = "quota#"


class WindowRace(StoreFault):
    """A window's item kept being reopened by other writers: counted as a DynamoDB fault."""


@dataclass(frozen=True)
class Window:
    name: str
    limit: int
    seconds: int


@dataclass(frozen=True)
class Count:
    value: int
    resets_in: float  # seconds until the window closes


class QuotaCounters:
    """Counts in fixed windows, in Redis and in DynamoDB."""

    def __init__(
        self,
        redis: CacheClient | None,
        table: Table | None,
        breakers: Breakers,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis, self._table, self._breakers, self._clock = redis, table, breakers, clock

    def add(self, subject: str, amounts: Sequence[tuple[Window, int]]) -> list[Count] | None:
        """Add each amount (0 reads) to ``subject``'s count in its window; the counts after,
        the larger of the two stores' for each, or ``None`` when neither store answered."""
        from_redis = self._redis_add(subject, amounts)
        from_table = self._table_add(subject, amounts)
        if from_redis is None and from_table is None:
            return None
        counts: list[Count] = []
        for i in range(len(amounts)):
            candidates = [c[i] for c in (from_redis, from_table) if c is not None]
            counts.append(max(candidates, key=lambda c: (c.value, c.resets_in)))
        return counts

    def _redis_add(self, subject: str, amounts: Sequence[tuple[Window, int]]) -> list[Count] | None:
        client = self._redis
        if client is None:
            return None
        # One hash tag per subject: every key of a call lands on one cluster slot.
        tag = hashlib.sha256(subject.encode()).hexdigest()[:24]

        def run() -> list[Any]:
            pipe = client.pipeline(transaction=True)
            for window, amount in amounts:
                key = f"quota:{{{tag}}}:{window.name}"
                pipe.set(key, 0, px=window.seconds * 1000, nx=True)
                pipe.incrby(key, amount)
                pipe.pttl(key)
            return list(pipe.execute())

        replies = self._breakers.redis.attempt(run, default=None, warn="Redis unavailable for quotas")
        if replies is None:
            return None
        return [
            Count(int(replies[3 * i + 1]), max(int(replies[3 * i + 2]), 0) / 1000)
            for i in range(len(amounts))
        ]

    def _table_add(self, subject: str, amounts: Sequence[tuple[Window, int]]) -> list[Count] | None:
        table = self._table
        if table is None:
            return None

        def run() -> list[Count]:
            return [self._table_add_one(table, subject, window, amount) for window, amount in amounts]

        return self._breakers.dynamodb.attempt(run, default=None, warn="DynamoDB unavailable for quotas")

    def _table_add_one(self, table: Table, subject: str, window: Window, amount: int) -> Count:
        now_ms = int(self._clock() * 1000)
        key: dict[str, str | int] = {
            "session_id": f"{PARTITION_PREFIX}{window.name}#{subject}",
            "turn_number": 0,
        }
        names = {"#c": "quota_count", "#e": "window_end", "#t": "ttl"}
        if amount == 0:
            item = table.get_item(Key=key, ConsistentRead=True).get("Item")
            if item is None or int(item["window_end"]) <= now_ms:  # type: ignore[arg-type]
                return Count(0, window.seconds)
            return Count(int(item["quota_count"]), (int(item["window_end"]) - now_ms) / 1000)  # type: ignore[arg-type]
        conflict = table.meta.client.exceptions.ConditionalCheckFailedException
        for _ in range(3):  # another writer may open the window between the two updates
            try:
                # The open window: count in it.
                item = table.update_item(
                    Key=key,
                    UpdateExpression="ADD #c :n",
                    ConditionExpression="#e > :now",
                    ExpressionAttributeNames={"#c": "quota_count", "#e": "window_end"},
                    ExpressionAttributeValues={":n": amount, ":now": now_ms},
                    ReturnValues="ALL_NEW",
                )["Attributes"]
                return Count(int(item["quota_count"]), (int(item["window_end"]) - now_ms) / 1000)  # type: ignore[arg-type]
            except conflict:
                pass
            end = now_ms + window.seconds * 1000
            try:
                # No window, or a closed one: open a new one with this amount.
                table.update_item(
                    Key=key,
                    UpdateExpression="SET #c = :n, #e = :end, #t = :ttl",
                    ConditionExpression="attribute_not_exists(#e) OR #e <= :now",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues={
                        ":n": amount,
                        ":now": now_ms,
                        ":end": end,
                        ":ttl": end // 1000 + 60,
                    },
                )
                return Count(amount, window.seconds)
            except conflict:
                continue
        raise WindowRace(window.name)
