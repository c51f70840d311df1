"""sendMessage: one conversation turn, streamed back to the connection."""

from typing import Any

from apigw_websocket import CORRELATION_ID_PATH, OK, MessageEvent, endpoint_url, errors_as_frames
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from chatmemory.errors import BadRequest
from chatmemory.handoff import hand_off, handed_off
from chatmemory.observability import logger, metrics, tracer
from chatmemory.protocol import SendMessage, parse_client_frame
from chatmemory.services import get_services

# Import the model SDK (about 1 s) during init, where SnapStart or provisioned concurrency can
# take it off the first turn; the client itself is still built on first use.
import chatmemory.llm.anthropic_model  # noqa: F401  # isort: skip


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """API Gateway's event: handed off when ``STREAM__HANDOFF`` says so (the integration then
    returns at once), else answered here. A handed-off event (the worker): answered here."""
    original = handed_off(event)
    if original is not None:
        return answer(original, context)
    settings = get_services().settings
    if hand_off(settings.stream, event, lambda worker: lambda_handler(worker, context), settings.aws_region):
        return OK
    return answer(event, context)


@logger.inject_lambda_context(correlation_id_path=CORRELATION_ID_PATH)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=MessageEvent)
def answer(event: MessageEvent, context: LambdaContext) -> dict[str, Any]:
    ctx = event.request_context
    services = get_services()
    endpoint = endpoint_url(ctx)
    with errors_as_frames(services.sender(endpoint), ctx.connection_id, ctx.request_id):
        frame = parse_client_frame(event.body if isinstance(event.body, str) else None)
        if not isinstance(frame, SendMessage):
            raise BadRequest("This route takes sendMessage frames only.")
        binding = services.sessions(endpoint).binding(ctx.connection_id)
        services.conversation(endpoint).send_message(binding, frame.message, frame.client_message_id)
    return OK
