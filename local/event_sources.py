"""Lambda's SQS event source mapping, locally: poll a queue, hand batches to the function's
handler as Lambda does (the same ``Records`` event), delete what it processed.

With ``ReportBatchItemFailures`` the handler's ``batchItemFailures`` stay on the queue; a
handler that raises leaves the whole batch there. What stays becomes visible again after
``retry_seconds`` (on AWS: the queue's visibility timeout) and is received again, until the
queue's redrive policy moves it to the dead-letter queue (moto does that on receive).

The poller makes a failed batch visible again itself, all its messages at once: moto, when
messages of a FIFO group turn visible one after the other by timing out, hands the group's last
one out first; SQS keeps the group's order, and so does this.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from local.lambda_runtime import invoke
from local.template import QueueMapping

Say = Callable[[str], None]
_HELD_SECONDS = 600  # a received message stays invisible until deleted or released
ATTRIBUTES = [
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
    "MessageGroupId",
    "MessageDeduplicationId",
    "SequenceNumber",
]


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """Received messages as the Lambda SQS event's ``Records``."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": dict(m.get("Attributes", {})),
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody") or hashlib.md5(m["Body"].encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


class QueuePoller:
    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        mapping: QueueMapping,
        *,
        retry_seconds: int = 2,
        region: str = "us-east-1",
        say: Say = print,
    ) -> None:
        self._sqs, self._url, self._mapping = sqs, queue_url, mapping
        self._retry, self._region, self._say = retry_seconds, region, say
        self._arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqs-{mapping.queue}")
        self._task: asyncio.Task[None] | None = None
        self._failed: list[tuple[float, list[str]]] = []  # (due, receipt handles) to release
        self.batches = 0

    def start(self) -> QueuePoller:
        self._task = asyncio.create_task(self._run())
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                polled = await loop.run_in_executor(self._pool, self.poll_once)
            except Exception as exc:  # the queue endpoint itself failing: try again shortly
                self._say(f"{self._mapping.queue} poll failed: {exc!r}")
                polled = False
            if not polled:
                await asyncio.sleep(0.2)

    def poll_once(self) -> bool:
        """One receive and, if it got messages, one invocation; whether it got any."""
        self._release_due()
        messages = self._sqs.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=min(self._mapping.batch_size, 10),
            VisibilityTimeout=_HELD_SECONDS,  # failed ones are released by _release_due
            WaitTimeSeconds=0,
            AttributeNames=ATTRIBUTES,
        ).get("Messages", [])
        if not messages:
            return False
        self.batches += 1
        event = sqs_event(messages, self._arn, self._region)
        failed: set[str] = set()
        try:
            response = invoke(self._mapping.function, event, timeout_seconds=30.0)
            if self._mapping.report_batch_item_failures and isinstance(response, dict):
                failed = {str(f["itemIdentifier"]) for f in response.get("batchItemFailures") or []}
        except Exception as exc:  # the whole batch failed: every message comes back
            self._say(f"{self._mapping.function.logical_id} failed its batch: {exc!r}")
            failed = {m["MessageId"] for m in messages}
        if failed:
            handles = [m["ReceiptHandle"] for m in messages if m["MessageId"] in failed]
            self._failed.append((time.monotonic() + self._retry, handles))
            if self._retry <= 0:
                self._release_due()
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self._url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
        return True

    def _release_due(self) -> None:
        now = time.monotonic()
        due = [handles for when, handles in self._failed if when <= now]
        self._failed = [(when, handles) for when, handles in self._failed if when > now]
        for handles in due:
            for start in range(0, len(handles), 10):
                self._sqs.change_message_visibility_batch(
                    QueueUrl=self._url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                        for i, h in enumerate(handles[start : start + 10])
                    ],
                )
