"""Reading the frames that moto's @connections API recorded for a connection."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from moto.apigatewaymanagementapi.models import apigatewaymanagementapi_backends
from moto.core import DEFAULT_ACCOUNT_ID

DOMAIN = "abc123def4.execute-api.us-east-1.amazonaws.com"
STAGE = "prod"
ENDPOINT = f"https://{DOMAIN}/{STAGE}"


def frames_sent(connection_id: str) -> list[dict[str, Any]]:
    """Every frame posted to the connection, in order (moto concatenates the posts)."""
    backend = apigatewaymanagementapi_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    # moto's HTTP server keeps the id as it came in the path, percent-encoded.
    key = next((k for k in (connection_id, quote(connection_id, safe="")) if k in backend.connections), None)
    data = backend.connections[key].data.decode() if key else ""
    decoder, frames, pos = json.JSONDecoder(), [], 0
    while pos < len(data):
        frame, pos = decoder.raw_decode(data, pos)
        frames.append(frame)
    return frames


def clear_frames(connection_id: str) -> None:
    backend = apigatewaymanagementapi_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    backend.connections.pop(connection_id, None)
    backend.connections.pop(quote(connection_id, safe=""), None)


def reply_text(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "delta")


def done_frame_of(frames: list[dict[str, Any]]) -> dict[str, Any]:
    return next(f for f in frames if f["type"] == "done")


def history_turns(frames: list[dict[str, Any]]) -> int:
    """How many earlier turns the turn's prompt carried, as its ``done`` frame reports."""
    return int(done_frame_of(frames)["usage"]["budget"]["historyTurns"])
