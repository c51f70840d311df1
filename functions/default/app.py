"""$default: frames no route matched (unknown action, or a body that is not JSON)."""

from apigw_websocket import RouteRequest, message_route
from chatmemory.errors import UnknownAction
from chatmemory.protocol import KNOWN_ACTIONS


@message_route
def lambda_handler(request: RouteRequest) -> None:
    # Bad bodies are refused while parsing; a known action only lands here when its route is
    # missing: still not served.
    raise UnknownAction(request.frame.action, sorted(KNOWN_ACTIONS))
