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

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from chatmemory.breakers import Breakers
from chatmemory.config import QuotaSettings, Settings
from chatmemory.errors import RateLimited
from chatmemory.identity import Unauthorized
from chatmemory.observability import logger, metrics
from chatmemory.storage.quota_counters import Count, QuotaCounters, Window

if TYPE_CHECKING:
    pass


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
