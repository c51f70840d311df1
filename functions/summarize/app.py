"""Summarize: bring one session's summary and facts up to date, and merge the facts its recent
turns state into its principal's long-term memory when they opted in. Invoked asynchronously
(``InvocationType="Event"``) by sendMessage after a turn's ``done``, with ``{"sessionId": ...}``.

A failed summary backs off by itself (``chatmemory.memory.updater``): the invocation fails, into
the dead-letter queue (Lambda does not retry it), only when the update is given up, or when the
session's memory cannot be read at all; the session's next turn schedules it again.
"""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from chatmemory.observability import logger, metrics, tracer
from chatmemory.services import get_services
from pydantic import BaseModel, Field

# The memory update (retrieval's index and embeddings among it) is imported during init.
import chatmemory.memory.updater  # noqa: F401  # isort: skip


class SummarizeEvent(BaseModel):
    session_id: str = Field(alias="sessionId", min_length=1, max_length=64)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=SummarizeEvent)
def lambda_handler(event: SummarizeEvent, context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(session_id=event.session_id)
    return {"updated": get_services().updater.update(event.session_id)}
