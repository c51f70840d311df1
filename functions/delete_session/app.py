"""deleteSession: erase the bound session (DynamoDB and Redis), if it is the caller's, and
bind the connection to a fresh one."""

from typing import Any

from apigw_websocket import CORRELATION_ID_PATH, OK, MessageEvent, endpoint_url, errors_as_frames
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from chatmemory.observability import logger, metrics, tracer
from chatmemory.protocol import parse_client_frame
from chatmemory.services import get_services


@logger.inject_lambda_context(correlation_id_path=CORRELATION_ID_PATH)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=MessageEvent)
def lambda_handler(event: MessageEvent, context: LambdaContext) -> dict[str, Any]:
    ctx = event.request_context
    services = get_services()
    endpoint = endpoint_url(ctx)
    with errors_as_frames(services.sender(endpoint), ctx.connection_id, ctx.request_id):
        parse_client_frame(event.body if isinstance(event.body, str) else None)
        services.data_rights(endpoint).delete_session(ctx.connection_id)
    return OK
