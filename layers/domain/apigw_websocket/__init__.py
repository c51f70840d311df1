"""The thin seam between API Gateway WebSocket events and the chatmemory domain: event
models (Powertools parser), the @connections endpoint of an event, and the one place that
turns domain errors into ``error`` frames."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayWebSocketConnectEventModel,
    APIGatewayWebSocketDisconnectEventModel,
    APIGatewayWebSocketMessageEventModel,
)
from aws_lambda_powertools.utilities.parser.models.apigw_websocket import (
    APIGatewayWebSocketConnectEventRequestContext,
    APIGatewayWebSocketEventRequestContextBase,
)
from chatmemory.errors import ChatError, ClientGone, InternalError
from chatmemory.observability import logger
from chatmemory.protocol import error_frame
from chatmemory.sender import FrameSender
from pydantic import BaseModel, Field

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
