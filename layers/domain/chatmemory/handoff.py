"""Handing a turn's generation off the API Gateway integration.

API Gateway waits at most 29 s for a route's Lambda, then tells the client "Endpoint request
timed out" (the Lambda runs on). With a handoff, sendMessage acknowledges at once and the turn
runs in an asynchronous invocation of the same function (``InvocationType="Event"``, payload up
to 1 MB, bounded by the function's own timeout), or, on the local stack, in a thread.

The worker receives ``{"handoff": <the original API Gateway event>}`` and answers it exactly as
the synchronous path does. A handoff that cannot be made is answered in place.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from botocore.config import Config

from chatmemory.config import StreamSettings
from chatmemory.observability import logger, metrics

HANDOFF_KEY = "handoff"
Event = dict[str, Any]


def handed_off(event: Event) -> Event | None:
    """The original event when this invocation is a worker's, else ``None``."""
    inner = event.get(HANDOFF_KEY) if isinstance(event, dict) else None
    return inner if isinstance(inner, dict) else None


def hand_off(
    settings: StreamSettings,
    event: Event,
    run: Callable[[Event], Any],
    region: str,
    invoked_arn: str | None = None,
) -> bool:
    """Start the turn elsewhere; whether it was (``False``: answer it here). ``invoked_arn``:
    the ARN this invocation was made through (the Lambda context's): the worker is invoked
    the same way, through the same alias, so it gets that version's SnapStart snapshot and
    the alias's failure destination."""
    if settings.handoff == "thread":
        threading.Thread(target=run, args=({HANDOFF_KEY: event},), daemon=True, name="handoff").start()
        return True
    if settings.handoff == "lambda":
        return _invoke_async(event, region, invoked_arn)
    return False


_client: Any = None


def _invoke_async(event: Event, region: str, invoked_arn: str | None) -> bool:
    global _client
    function = invoked_arn or os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    if not function:
        logger.warning("handoff=lambda outside Lambda: answering in place")
        return False
    if _client is None:
        _client = boto3.client(
            "lambda",
            region_name=region,
            config=Config(connect_timeout=1, read_timeout=3, retries={"max_attempts": 2, "mode": "standard"}),
        )
    try:
        _client.invoke(
            FunctionName=function, InvocationType="Event", Payload=json.dumps({HANDOFF_KEY: event}).encode()
        )
    except Exception as exc:  # botocore's errors: the turn is answered here instead
        logger.warning("could not hand the turn off", extra={"error": type(exc).__name__})
        metrics.add_metric(name="HandoffFailed", unit=MetricUnit.Count, value=1)
        return False
    metrics.add_metric(name="HandedOff", unit=MetricUnit.Count, value=1)
    return True
