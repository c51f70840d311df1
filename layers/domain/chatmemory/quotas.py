"""Abuse and cost controls: per principal, messages per window and model tokens per day; per
source address, guests created at ``$connect``.

Every count is a fixed window that opens at its first count. It is kept in Redis (one MULTI:
the window's key made with its expiry if absent, then incremented) and in DynamoDB (an atomic
UpdateItem on an item of ``ChatSessions`` under its own partition, ``quota#...``, expiring by
TTL), each store behind its breaker. A decision takes the larger of the two counts: a store
that is down, or a Redis that restarted empty, never makes anyone unlimited while the other
store still answers. Only when neither answers is a request let through, counted in the
``QuotaUnchecked`` metric (the turn itself then has no store either, see docs/resilience.md).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from chatmemory.breakers import Breakers, StoreFault
from chatmemory.config import QuotaSettings, Settings
from chatmemory.errors import RateLimited
from chatmemory.identity import Unauthorized
from chatmemory.observability import logger, metrics

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table

    from chatmemory.cache import CacheClient

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


@dataclass(frozen=True)
class Admission:
    """What ``Quotas.admit`` counted: the message's count and the day's tokens before the turn
    (``None``: not counted, neither store answered)."""

    messages: Count | None = None
    tokens: Count | None = None


class Quotas:
    """Per principal: messages per window (counted when a message arrives) and model tokens per
    day (checked then, charged after the reply: a turn may end past the limit by its own tokens)."""

    def __init__(self, counters: QuotaCounters, settings: QuotaSettings) -> None:
        self._counters, self._settings = counters, settings
        self.messages = Window("messages", settings.messages_per_window, settings.message_window_seconds)
        self.tokens = Window("tokens", settings.tokens_per_day, 86_400)

    def admit(self, principal: str) -> Admission:
        """Count one message; ``RateLimited`` when it is over a limit (nothing else happens then)."""
        counts = self._counters.add(principal, [(self.messages, 1), (self.tokens, 0)])
        if counts is None:
            logger.warning("quota not checked: neither Redis nor DynamoDB answered")
            metrics.add_metric(name="QuotaUnchecked", unit=MetricUnit.Count, value=1)
            return Admission()
        messages, tokens = counts
        if messages.value > self.messages.limit:
            raise self._refused("messages", messages)
        if tokens.value >= self.tokens.limit:
            raise self._refused("tokens", tokens)
        return Admission(messages, tokens)

    def left(self, admission: Admission, tokens: int) -> dict[str, Any] | None:
        """What is left once the turn's ``tokens`` are charged, when less than ``warn_share`` of a
        limit is (the ``quota`` field of ``done``), else ``None``."""
        if admission.messages is None or admission.tokens is None:
            return None
        messages_left = max(self.messages.limit - admission.messages.value, 0)
        tokens_left = max(self.tokens.limit - admission.tokens.value - tokens, 0)
        share = self._settings.warn_share
        if messages_left >= share * self.messages.limit and tokens_left >= share * self.tokens.limit:
            return None
        return {
            "messagesLeft": messages_left,
            "messagesResetInSeconds": math.ceil(admission.messages.resets_in),
            "tokensLeft": tokens_left,
            "tokensResetInSeconds": math.ceil(admission.tokens.resets_in),
        }

    def charge(self, principal: str, tokens: int) -> None:
        """Count the turn's model tokens in the principal's day (after its done frame)."""
        if tokens > 0:
            self._counters.add(principal, [(self.tokens, tokens)])

    @staticmethod
    def _refused(limit: str, count: Count) -> RateLimited:
        logger.info("rate limited", extra={"limit": limit})
        metrics.add_metric(name="RateLimited", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name=f"RateLimited_{limit}", unit=MetricUnit.Count, value=1)
        return RateLimited(limit, math.ceil(count.resets_in))


class TooManyGuests(Unauthorized):
    """This source created as many guests as it may for now."""


class GuestAdmission:
    """Guests created per source address: a burst allowance and a sustained hourly rate."""

    def __init__(self, counters: QuotaCounters, settings: QuotaSettings) -> None:
        self._counters = counters
        self._windows = [
            Window("guests_burst", settings.guests_per_source_burst, settings.guest_burst_window_seconds),
            Window("guests_hour", settings.guests_per_source_per_hour, 3_600),
        ]

    def admit(self, source: str) -> None:
        counts = self._counters.add(source, [(window, 1) for window in self._windows])
        if counts is None:
            logger.warning("guest limit not checked: neither Redis nor DynamoDB answered")
            metrics.add_metric(name="QuotaUnchecked", unit=MetricUnit.Count, value=1)
            return
        for window, count in zip(self._windows, counts, strict=True):
            if count.value > window.limit:
                metrics.add_metric(name="GuestRefused", unit=MetricUnit.Count, value=1)
                raise TooManyGuests(f"too many guests from this source ({window.name})")
        metrics.add_metric(name="GuestCreated", unit=MetricUnit.Count, value=1)


def counters_from_settings(settings: Settings) -> QuotaCounters:
    """Counters on the deployment's Redis (if any) and ``ChatSessions``, with their own breakers."""
    from chatmemory.clients import dynamodb_resource, redis_client

    table = dynamodb_resource(settings).Table(settings.storage.sessions_table)
    return QuotaCounters(redis_client(settings), table, Breakers.from_settings(settings.breaker))
