"""deleteSession: erase the bound session (DynamoDB and Redis), if it is the caller's, and
bind the connection to a fresh one."""

from apigw_websocket import RouteRequest, message_route


@message_route
def lambda_handler(request: RouteRequest) -> None:
    request.services.data_rights(request.endpoint).delete_session(request.connection_id)
