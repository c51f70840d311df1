"""sendMessage: one conversation turn, streamed back to the connection."""

from typing import Any

from apigw_websocket import OK, RouteRequest, message_route
from aws_lambda_powertools.utilities.typing import LambdaContext
from chatmemory.errors import BadRequest
from chatmemory.handoff import hand_off, handed_off
from chatmemory.observability import metrics
from chatmemory.protocol import SendMessage
from chatmemory.services import get_services

# Import the model SDK (about 1 s) and the turn's memory (retrieval: numpy, the search index)
# during init, where SnapStart or provisioned concurrency can take them off the first turn;
# the clients themselves are still built on first use.
import chatmemory.conversation  # isort: skip
import chatmemory.llm.anthropic_model  # noqa: F401  # isort: skip
from chatmemory import snapstart  # isort: skip

snapstart.register()  # its hooks, for a deployment with SendMessageSnapStart=true


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """API Gateway's event: handed off when ``STREAM__HANDOFF`` says so (the integration then
    returns at once), else answered here. A handed-off event (the worker): answered here."""
    original = handed_off(event)
    if original is not None:
        return answer(original, context)
    settings = get_services().settings

    def worker(original: dict[str, Any]) -> Any:
        return lambda_handler(original, context)

    if hand_off(settings.stream, event, worker, settings.aws_region, context.invoked_function_arn):
        metrics.flush_metrics()  # this invocation ends here: HandedOff goes out with it
        return OK
    return answer(event, context)


@message_route
def answer(request: RouteRequest) -> None:
    if not isinstance(request.frame, SendMessage):
        raise BadRequest("This route takes sendMessage frames only.")
    binding = request.services.sessions(request.endpoint).binding(request.connection_id)
    request.services.conversation(request.endpoint).send_message(
        binding, request.frame.message, request.frame.client_message_id, request.message_id
    )
