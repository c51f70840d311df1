"""Summarize: bring one session's summary and facts up to date. Invoked asynchronously
(``InvocationType="Event"``) by sendMessage after a turn's ``done``, with ``{"sessionId": ...}``.

A failure raises, so Lambda's own retry runs once; after that the session's next turn, finding
the summary still behind, schedules it again.
"""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from chatmemory.observability import logger, metrics, tracer
from chatmemory.services import get_services


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    session_id = event.get("sessionId")
    if not isinstance(session_id, str) or not session_id:
        logger.warning("summarize event without a sessionId")
        return {"updated": False}
    logger.append_keys(session_id=session_id)
    return {"updated": get_services().updater.update(session_id)}
