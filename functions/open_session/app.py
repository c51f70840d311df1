"""openSession: switch this connection to one of the caller's conversations (at one of its
turns) and send its session frame."""

from apigw_websocket import RouteRequest, message_route
from chatmemory.errors import BadRequest
from chatmemory.protocol import OpenSession


@message_route
def lambda_handler(request: RouteRequest) -> None:
    if not isinstance(request.frame, OpenSession):
        raise BadRequest("This route takes openSession frames only.")
    request.services.session_list(request.endpoint).open_session(
        request.connection_id, request.frame.session_id, request.frame.turn
    )
