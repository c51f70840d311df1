"""setMemory: the bound session's memory strategy and/or the caller's long-term memory (opt
in, or out and erased); answers with a memory frame."""

from apigw_websocket import RouteRequest, message_route
from chatmemory.errors import BadRequest
from chatmemory.protocol import SetMemory


@message_route
def lambda_handler(request: RouteRequest) -> None:
    if not isinstance(request.frame, SetMemory):
        raise BadRequest("This route takes setMemory frames only.")
    request.services.memory_controls(request.endpoint).set_memory(
        request.connection_id, request.frame.memory_strategy, request.frame.long_term
    )
