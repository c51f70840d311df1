"""newSession: bind the connection to a fresh session (with its own memory strategy when the
frame names one) and send its session frame."""

from apigw_websocket import RouteRequest, message_route
from chatmemory.protocol import NewSession


@message_route
def lambda_handler(request: RouteRequest) -> None:
    strategy = request.frame.memory_strategy if isinstance(request.frame, NewSession) else None
    request.services.sessions(request.endpoint).new_session(request.connection_id, strategy)
