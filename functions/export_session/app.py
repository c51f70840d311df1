"""exportSession: every turn, the summary and the facts of the bound session, if it is the
caller's, as JSON over export frames."""

from apigw_websocket import RouteRequest, message_route


@message_route
def lambda_handler(request: RouteRequest) -> None:
    request.services.data_rights(request.endpoint).export_session(request.connection_id)
