"""Drive the template's handlers with API-Gateway-shaped events, as API Gateway would."""

from __future__ import annotations

import json
from typing import Any

from local.events import connect_event, disconnect_event, message_event
from local.lambda_runtime import invoke
from local.template import load_template
from tests.support.frames import DOMAIN, STAGE, clear_frames, frames_sent


class Client:
    """One WebSocket client, as the handlers see it."""

    def __init__(self, connection_id: str, principal: str | None = None) -> None:
        """``principal``: the $connect authorizer's verdict (its ``principalId``); without
        one the connection is anonymous, as with no authorizer configured."""
        self.connection_id = connection_id
        self.principal = principal
        self._routes = load_template().routes()
        self._seen = 0

    def connect(self, session_id: str | None = None) -> Any:
        query = {"session_id": session_id} if session_id else None
        authorizer = {"principalId": self.principal} if self.principal else None
        event = connect_event(
            self.connection_id, query=query, domain_name=DOMAIN, stage=STAGE, authorizer=authorizer
        )
        clear_frames(self.connection_id)
        return invoke(self._routes["$connect"], event)

    def send(self, body: str | dict[str, Any]) -> list[dict[str, Any]]:
        """Send one frame; return the frames the server posted back for it."""
        text = body if isinstance(body, str) else json.dumps(body)
        try:
            action = json.loads(text).get("action")
        except (ValueError, AttributeError):
            action = None
        route = action if action in self._routes else "$default"
        invoke(
            self._routes[route],
            message_event(self.connection_id, route, text, domain_name=DOMAIN, stage=STAGE),
        )
        frames = frames_sent(self.connection_id)
        new, self._seen = frames[self._seen :], len(frames)
        return new

    def say(self, message: str) -> list[dict[str, Any]]:
        return self.send({"action": "sendMessage", "message": message})

    def disconnect(self) -> Any:
        return invoke(
            self._routes["$disconnect"], disconnect_event(self.connection_id, domain_name=DOMAIN, stage=STAGE)
        )
