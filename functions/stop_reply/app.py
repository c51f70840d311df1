"""stopReply: end the reply being written for the caller's session (the turn's done frame says
stopped; what was shown is stored, as interrupted)."""

from apigw_websocket import RouteRequest, message_route


@message_route
def lambda_handler(request: RouteRequest) -> None:
    request.services.sessions(request.endpoint).stop_reply(request.connection_id)
