"""$default: frames no route matched (unknown action, or a body that is not JSON)."""

from typing import Any

from apigw_websocket import CORRELATION_ID_PATH, OK, MessageEvent, endpoint_url, errors_as_frames
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from chatmemory.errors import UnknownAction
from chatmemory.observability import logger, metrics, tracer
from chatmemory.protocol import KNOWN_ACTIONS, parse_client_frame
from chatmemory.services import get_services


@logger.inject_lambda_context(correlation_id_path=CORRELATION_ID_PATH)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=MessageEvent)
def lambda_handler(event: MessageEvent, context: LambdaContext) -> dict[str, Any]:
    ctx = event.request_context
    sender = get_services().sender(endpoint_url(ctx))
    with errors_as_frames(sender, ctx.connection_id, ctx.request_id):
        frame = parse_client_frame(event.body if isinstance(event.body, str) else None)
        # A known action only lands here when its route is missing: still not served.
        raise UnknownAction(frame.action, sorted(KNOWN_ACTIONS))
    return OK
