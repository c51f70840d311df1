"""listSessions: a page of the caller's conversations, newest activity first."""

from apigw_websocket import RouteRequest, message_route
from chatmemory.errors import BadRequest
from chatmemory.protocol import ListSessions


@message_route
def lambda_handler(request: RouteRequest) -> None:
    if not isinstance(request.frame, ListSessions):
        raise BadRequest("This route takes listSessions frames only.")
    request.services.session_list(request.endpoint).list_sessions(
        request.connection_id, request.frame.cursor, request.frame.limit
    )
