"""deleteMyData: the right to erasure. Every session of the caller's principal (turns, summaries,
facts, cache entries) and its long-term memory, then a fresh session on this connection."""

from apigw_websocket import RouteRequest, message_route


@message_route
def lambda_handler(request: RouteRequest) -> None:
    request.services.data_rights(request.endpoint).delete_my_data(request.connection_id)
