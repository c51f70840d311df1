"""The thin seam between API Gateway WebSocket events and the chatmemory domain: event
models (Powertools parser), the @connections endpoint of an event, and the one place that
turns domain errors into ``error`` frames."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayWebSocketConnectEventModel,
    APIGatewayWebSocketDisconnectEventModel,
    APIGatewayWebSocketMessageEventModel,
)
from aws_lambda_powertools.utilities.parser.models.apigw_websocket import (
    APIGatewayWebSocketConnectEventRequestContext,
    APIGatewayWebSocketEventRequestContextBase,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from chatmemory.errors import ChatError, ClientGone, FrameTooLarge, InternalError
from chatmemory.observability import logger, metrics, tracer
from chatmemory.protocol import AnyClientFrame, error_frame, parse_client_frame
from chatmemory.sender import FrameSender
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    # Imported by the message routes when they run: the $connect authorizer's event model
    # lives here too, and the authorizer needs neither Redis nor the conversation graph.
    from chatmemory.services import Services

# What a Lambda integration of a WebSocket route returns. For $connect, any other status
# refuses the handshake.
OK: dict[str, Any] = {"statusCode": 200}
CORRELATION_ID_PATH = "requestContext.connectionId"


class ConnectRequestContext(APIGatewayWebSocketConnectEventRequestContext):
    authorizer: dict[str, Any] | None = None


class ConnectEvent(APIGatewayWebSocketConnectEventModel):
    query_string_parameters: dict[str, str] | None = Field(None, alias="queryStringParameters")
    request_context: ConnectRequestContext = Field(alias="requestContext")


class ConnectAuthorizerEvent(BaseModel):
    """What API Gateway sends a REQUEST authorizer on ``$connect`` (the parser has no model)."""

    type: Literal["REQUEST"]
    method_arn: str = Field(alias="methodArn")
    headers: dict[str, str] | None = None
    query_string_parameters: dict[str, str] | None = Field(None, alias="queryStringParameters")
    request_context: APIGatewayWebSocketConnectEventRequestContext = Field(alias="requestContext")


DisconnectEvent = APIGatewayWebSocketDisconnectEventModel
MessageEvent = APIGatewayWebSocketMessageEventModel


def endpoint_url(context: APIGatewayWebSocketEventRequestContextBase) -> str:
    """The @connections endpoint of the API that sent the event."""
    return f"https://{context.domain_name}/{context.stage}"


@contextmanager
def errors_as_frames(sender: FrameSender, connection_id: str, request_id: str) -> Iterator[None]:
    """Send an ``error`` frame for whatever goes wrong, so no exception leaves the handler."""
    try:
        yield
    except ClientGone:
        logger.info("client gone")
    except FrameTooLarge as error:
        logger.error("a frame over the WebSocket limit was refused", extra={"bytes": error.size})
        metrics.add_metric(name="FrameTooLarge", unit=MetricUnit.Count, value=1)
        _send_quietly(sender, connection_id, error_frame(error, request_id))
    except ChatError as error:
        logger.info("request refused", extra={"code": str(error.code)})
        _send_quietly(sender, connection_id, error_frame(error, request_id))
    except Exception:
        logger.exception("unhandled error")
        _send_quietly(sender, connection_id, error_frame(InternalError(), request_id))


def _send_quietly(sender: FrameSender, connection_id: str, frame: dict[str, Any]) -> None:
    try:
        sender.send(connection_id, frame)
    except Exception:
        logger.exception("could not send the error frame")


@dataclass(frozen=True)
class RouteRequest:
    """One client frame on a message route, parsed, with what serving it needs."""

    connection_id: str
    request_id: str
    endpoint: str
    frame: AnyClientFrame
    services: Services
    message_id: str | None = None  # API Gateway's id of this frame: the same on a redelivery


LambdaHandler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def message_route(serve: Callable[[RouteRequest], None]) -> LambdaHandler:
    """A message route's Lambda handler: Powertools logging (correlation id = connection id),
    tracing and metrics, the event parsed, the client frame parsed, ``serve`` called, and any
    error sent back as an ``error`` frame."""

    @logger.inject_lambda_context(correlation_id_path=CORRELATION_ID_PATH)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    @event_parser(model=MessageEvent)
    @functools.wraps(serve)
    def handler(event: MessageEvent, context: LambdaContext) -> dict[str, Any]:
        from chatmemory.services import get_services

        ctx = event.request_context
        services = get_services()
        endpoint = endpoint_url(ctx)
        with errors_as_frames(services.sender(endpoint), ctx.connection_id, ctx.request_id):
            frame = parse_client_frame(event.body if isinstance(event.body, str) else None)
            serve(RouteRequest(ctx.connection_id, ctx.request_id, endpoint, frame, services, ctx.message_id))
        return OK

    return handler
