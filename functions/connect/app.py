"""$connect: bind the new connection to a session (resumed with ?session_id= or new)."""

from typing import Any

from apigw_websocket import CORRELATION_ID_PATH, OK, ConnectEvent, endpoint_url
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from chatmemory.observability import logger, metrics, tracer
from chatmemory.services import get_services

ANONYMOUS = "anonymous"
REFUSED: dict[str, Any] = {"statusCode": 500}


@logger.inject_lambda_context(correlation_id_path=CORRELATION_ID_PATH)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=ConnectEvent)
def lambda_handler(event: ConnectEvent, context: LambdaContext) -> dict[str, Any]:
    ctx = event.request_context
    requested = (event.query_string_parameters or {}).get("session_id")
    # The authorizer's verdict; without one (no authorizer configured) everyone is anonymous.
    authorizer = ctx.authorizer or {}
    principal = str(authorizer.get("principalId") or ANONYMOUS)
    guest_token = authorizer.get("guestToken")
    try:
        binding = (
            get_services()
            .sessions(endpoint_url(ctx))
            .connect(ctx.connection_id, requested, principal, str(guest_token) if guest_token else None)
        )
    except ConnectionError:
        logger.exception("connection refused: no store for the binding")
        return REFUSED
    logger.info("connected", extra={"session_id": binding.session_id, "resumed_requested": bool(requested)})
    return OK
