"""forgetUserMemory: erase one of the caller's long-term facts (by key) or all of them, in
DynamoDB and Redis; answers with what is left."""

from apigw_websocket import RouteRequest, message_route
from chatmemory.errors import BadRequest
from chatmemory.protocol import ForgetUserMemory


@message_route
def lambda_handler(request: RouteRequest) -> None:
    if not isinstance(request.frame, ForgetUserMemory):
        raise BadRequest("This route takes forgetUserMemory frames only.")
    request.services.memory_controls(request.endpoint).forget_user_memory(
        request.connection_id, request.frame.key
    )
