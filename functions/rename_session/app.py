"""renameSession: give one of the caller's conversations its title."""

from apigw_websocket import RouteRequest, message_route
from chatmemory.errors import BadRequest
from chatmemory.protocol import RenameSession


@message_route
def lambda_handler(request: RouteRequest) -> None:
    if not isinstance(request.frame, RenameSession):
        raise BadRequest("This route takes renameSession frames only.")
    request.services.session_list(request.endpoint).rename_session(
        request.connection_id, request.frame.title, request.frame.session_id
    )
