"""The turn outbox: a turn answered while DynamoDB is unavailable is not lost.

The turn path sends the finished turn (the user's message, the reply, its status and usage) to
an SQS FIFO queue, one message group per session, so a session's turns are delivered in the order
they were answered and one at a time. The outbox replay function (an SQS event source of its own)
writes each one into ``ChatSessions`` once DynamoDB answers again, then drops the session's Redis
window so the cache never serves a history without it.

Turn numbers. While DynamoDB is unavailable the session's last stored number is not known for sure
(``cache_only`` knows what the cache held, ``stateless`` nothing), so the number the user saw in
``delta`` and ``done`` is provisional and not sent. The replay gives each turn the next free
number at the time it is written (the highest stored number, expired or not, plus one) with a
conditional put, so it can neither overwrite a turn nor leave a hole: queued turns follow every
turn already stored, in the order they were answered. A turn answered live after DynamoDB came
back but before the queue drained is stored before them.

Exactly once. SQS may deliver a message more than once, and a batch may fail after some of its
writes. Every queued turn carries an ``outbox_id`` that is stored on its item; the replay looks it
up first and only writes a turn that is not there. A turn whose first write timed out on the turn
path yet reached the table is recognised by its ``client_message_id`` (when the client sent one):
that item is finished with the reply instead of a second one being added. A message is deleted
(reported as processed) only once its turn is stored and the cache entry is dropped; anything
else is retried, and after the queue's ``maxReceiveCount`` receives it moves to the dead-letter
queue (replaying it from there is safe for the same reason). A turn of a session erased since it
was queued (``deleteSession``, ``deleteMyData``) is dropped, never stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from chatmemory.breakers import Breakers
from chatmemory.errors import TurnConflict
from chatmemory.observability import logger, metrics
from chatmemory.storage.session_meta import SessionMetaStore
from chatmemory.storage.turn_cache import TurnCache
from chatmemory.storage.turns import TurnStore
from chatmemory.turns import Turn, Usage

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

# Other writers (live turns) may take the next number between the read and the put.
_ALLOCATION_ATTEMPTS = 5


class OutboxRecord(BaseModel):
    """One queued turn: the message body. ``turn.turn`` is the provisional number the user saw."""

    outbox_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    turn: Turn
    # The user's message is stored under ``turn.turn`` already; only its reply failed to be.
    stored: bool = False


class TurnOutbox:
    """Sends finished turns to the FIFO queue; the caller wraps ``send`` in its breaker."""

    def __init__(self, client: SQSClient, queue_url: str) -> None:
        self._client, self._queue_url = client, queue_url

    def send(self, record: OutboxRecord) -> None:
        self._client.send_message(
            QueueUrl=self._queue_url,
            MessageBody=record.model_dump_json(),
            MessageGroupId=record.turn.session_id,  # one session's turns in order, one at a time
            MessageDeduplicationId=record.outbox_id,
        )


class OutboxReplayer:
    """Writes queued turns into ``ChatSessions``: in order, without holes, exactly once."""

    def __init__(
        self,
        store: TurnStore,
        meta: SessionMetaStore,
        cache: TurnCache | None,
        breakers: Breakers,
        session_ttl_seconds: int,
        clock: Callable[[], float],
    ) -> None:
        self._store, self._meta, self._cache, self._breakers = store, meta, cache, breakers
        self._ttl, self._clock = session_ttl_seconds, clock

    def replay(self, record: OutboxRecord) -> int:
        """Store the record's turn (unless it already is) and drop the session's cache window.
        Returns the turn's stored number (0 when its session was erased meanwhile: nothing is
        stored). Raises if either cannot be done now (retry later)."""
        session_id = record.turn.session_id
        if self._breakers.dynamodb.call(self._meta.is_erased, session_id, int(self._clock())):
            # The user erased the session after this turn was queued: storing it would bring the
            # erased conversation back. The message is done with.
            logger.info("queued turn of an erased session dropped", extra={"outbox_id": record.outbox_id})
            metrics.add_metric(name="OutboxErasedSkipped", unit=MetricUnit.Count, value=1)
            return 0
        number = self._finish_stored(record) if record.stored else self._store_whole(record)
        if self._cache is not None:
            # The window the cache holds lacks this turn: it must go (a read refills it).
            self._breakers.redis.call(self._cache.invalidate, session_id)
        return number

    def _store_whole(self, record: OutboxRecord) -> int:
        found = self._breakers.dynamodb.call(
            self._store.find_outbox_turn,
            record.turn.session_id,
            record.outbox_id,
            record.turn.client_message_id,
        )
        if found is None:
            number = self._write(record)
            metrics.add_metric(name="OutboxTurnReplayed", unit=MetricUnit.Count, value=1)
            return number
        number, replayed, status = found
        if not replayed and status == "pending":
            # The turn path's put timed out yet happened: finish that item, do not add one.
            self._finish(record, number)
        logger.info("queued turn already stored", extra={"turn": number, "outbox_id": record.outbox_id})
        metrics.add_metric(name="OutboxDuplicateSkipped", unit=MetricUnit.Count, value=1)
        return number

    def _finish_stored(self, record: OutboxRecord) -> int:
        """Put the reply on the item the turn path stored the message in. Its number is the
        turn's own (numbers are never reused while the item lives), so finishing it twice
        writes the same reply twice; an item gone meanwhile (expired) is left gone."""
        try:
            self._finish(record, record.turn.turn)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            logger.info("queued reply's turn is gone", extra={"turn": record.turn.turn})
            return record.turn.turn
        metrics.add_metric(name="OutboxReplyStored", unit=MetricUnit.Count, value=1)
        return record.turn.turn

    def _finish(self, record: OutboxRecord, number: int) -> None:
        turn = record.turn
        usage = Usage(
            input_tokens=turn.input_tokens,
            output_tokens=turn.output_tokens,
            cache_read_input_tokens=turn.cache_read_tokens,
            cache_creation_input_tokens=turn.cache_creation_tokens,
        )
        self._breakers.dynamodb.call(
            self._store.finish_turn,
            turn.session_id,
            number,
            turn.assistant or "",
            turn.status,
            usage,
            max(turn.expires_at, int(self._clock()) + self._ttl),
            turn.user_tokens,
        )

    def _write(self, record: OutboxRecord) -> int:
        session_id = record.turn.session_id
        expires_at = max(record.turn.expires_at, int(self._clock()) + self._ttl)
        for _ in range(_ALLOCATION_ATTEMPTS):
            number = self._breakers.dynamodb.call(self._store.last_turn_number, session_id) + 1
            turn = record.turn.model_copy(update={"turn": number, "expires_at": expires_at})
            try:
                self._breakers.dynamodb.call(self._store.put_turn, turn, record.outbox_id)
            except TurnConflict:
                continue
            logger.info(
                "queued turn stored",
                extra={"turn": number, "provisional": record.turn.turn, "outbox_id": record.outbox_id},
            )
            return number
        raise TurnConflict(f"no free turn number for {session_id} after {_ALLOCATION_ATTEMPTS} attempts")


def parse_record(body: str) -> OutboxRecord:
    """A message body as the turn path wrote it (``ValidationError`` for anything else)."""
    return OutboxRecord.model_validate_json(body)
