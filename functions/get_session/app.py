"""getSession: the session frame with the last N turns, for a (re)loaded page, or with the N
turns before ``before`` (paging back through older turns), or with ``turn`` one turn's whole
text as turn frames."""

from apigw_websocket import RouteRequest, message_route
from chatmemory.protocol import GetSession


@message_route
def lambda_handler(request: RouteRequest) -> None:
    sessions = request.services.sessions(request.endpoint)
    if isinstance(request.frame, GetSession) and request.frame.turn is not None:
        sessions.send_turn(request.connection_id, request.frame.turn)
    elif isinstance(request.frame, GetSession) and request.frame.before is not None:
        sessions.send_older(request.connection_id, request.frame.before)
    else:
        sessions.send_session(request.connection_id)
