"""$disconnect: forget the connection's binding (the session itself stays) and count the
conversation's end."""

from typing import Any

from apigw_websocket import CORRELATION_ID_PATH, OK, DisconnectEvent
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from chatmemory.observability import logger, metrics, tracer
from chatmemory.services import get_services
from chatmemory.sessions import end_conversation


@logger.inject_lambda_context(correlation_id_path=CORRELATION_ID_PATH)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=DisconnectEvent)
def lambda_handler(event: DisconnectEvent, context: LambdaContext) -> dict[str, Any]:
    services = get_services()  # no @connections client: nothing is sent to a closed connection
    end_conversation(services.registry, services.memory, event.request_context.connection_id)
    logger.info("disconnected", extra={"reason": event.request_context.disconnect_reason})
    return OK
