"""newSession: bind the connection to a fresh session and send its session frame."""

from apigw_websocket import RouteRequest, message_route


@message_route
def lambda_handler(request: RouteRequest) -> None:
    request.services.sessions(request.endpoint).new_session(request.connection_id)
