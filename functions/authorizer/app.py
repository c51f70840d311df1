"""$connect REQUEST authorizer: the token comes in ``?token=`` (browsers cannot set headers
on a WebSocket upgrade). Allows the connection as a principal, or refuses it."""

from typing import Any

from apigw_websocket import ConnectAuthorizerEvent
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerResponseWebSocket,
)
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from chatmemory.authentication import build_authenticator
from chatmemory.config import get_settings
from chatmemory.identity import Authenticator, Unauthorized, source_of
from chatmemory.observability import logger, metrics

_authenticator: Authenticator | None = None


def authenticator() -> Authenticator:
    global _authenticator
    if _authenticator is None:
        _authenticator = build_authenticator(get_settings())
    return _authenticator


@logger.inject_lambda_context(correlation_id_path="requestContext.connectionId")
@metrics.log_metrics
@event_parser(model=ConnectAuthorizerEvent)
def lambda_handler(event: ConnectAuthorizerEvent, context: LambdaContext) -> dict[str, Any]:
    token = (event.query_string_parameters or {}).get("token")
    source = source_of(
        str(event.request_context.identity.source_ip.network_address),
        event.headers,
        get_settings().quota.forwarded_for_hops,
    )
    try:
        identity = authenticator().authenticate(token, source)
    except Unauthorized as refused:
        logger.info("connection refused", extra={"reason": str(refused)})
        response = APIGatewayAuthorizerResponseWebSocket.from_route_arn(event.method_arn, "unauthorized")
        response.deny_all_routes()
        return response.asdict()
    context_values = {"principal": identity.principal}
    if identity.new_guest_token:
        context_values["guestToken"] = identity.new_guest_token
    response = APIGatewayAuthorizerResponseWebSocket.from_route_arn(
        event.method_arn, identity.principal, context=context_values
    )
    response.allow_route("$connect")  # the only route an authorizer guards on WebSocket APIs
    logger.info(
        "connection allowed",
        extra={
            "guest": identity.is_guest,
            "new_guest": identity.is_guest and not token,
            "token_issued": bool(identity.new_guest_token),
        },
    )
    return response.asdict()
