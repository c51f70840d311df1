"""getUserMemory: the caller's long-term memory (opt-in and facts), as userMemory frames."""

from apigw_websocket import RouteRequest, message_route


@message_route
def lambda_handler(request: RouteRequest) -> None:
    request.services.memory_controls(request.endpoint).get_user_memory(request.connection_id)
