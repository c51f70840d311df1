"""Frames to the browser through API Gateway's @connections API, and delta batching."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from chatmemory.errors import ClientGone, FrameTooLarge
from chatmemory.protocol import FRAME_BUDGET_BYTES, MAX_FRAME_BYTES, delta_frame, encode

if TYPE_CHECKING:
    from mypy_boto3_apigatewaymanagementapi import ApiGatewayManagementApiClient

# Room in a frame for the JSON around a delta's text.
_ENVELOPE_BYTES = 64
# JSON may escape one character into six bytes (\\u0000), so this much text always fits a frame.
_TEXT_BUDGET = FRAME_BUDGET_BYTES // 6 - _ENVELOPE_BYTES


class FrameSender(Protocol):
    def send(self, connection_id: str, frame: dict[str, Any]) -> None: ...


class ConnectionSender:
    """Posts frames with ``post_to_connection``; raises ``ClientGone`` for a closed socket, and
    ``FrameTooLarge`` (a readable ``internal`` error) rather than post a frame API Gateway refuses."""

    def __init__(self, client: ApiGatewayManagementApiClient) -> None:
        self._client = client

    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        data = encode(frame)
        if len(data) > MAX_FRAME_BYTES:
            raise FrameTooLarge(len(data))
        try:
            self._client.post_to_connection(ConnectionId=connection_id, Data=data)
        except self._client.exceptions.GoneException as exc:
            raise ClientGone(connection_id) from exc
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 410:
                raise ClientGone(connection_id) from exc
            raise


class DeltaBatcher:
    """Collects model text and sends it as few ``delta`` frames as keep the stream lively:
    a frame goes out when enough text is buffered or enough time has passed, and never
    exceeds the 32 KB frame limit."""

    def __init__(
        self,
        sender: FrameSender,
        connection_id: str,
        turn: int,
        flush_chars: int,
        flush_interval: float,
        clock: Callable[[], float],
    ) -> None:
        self._sender, self._connection_id, self._turn = sender, connection_id, turn
        self._flush_chars, self._interval, self._clock = flush_chars, flush_interval, clock
        self._buffer: list[str] = []
        self._buffered_bytes = 0
        self._last_flush = clock()
        self.frames_sent = 0

    def add(self, text: str) -> None:
        for piece in _split_utf8(text, _TEXT_BUDGET):
            size = len(piece.encode())
            if self._buffered_bytes + size > _TEXT_BUDGET:
                self.flush()
            self._buffer.append(piece)
            self._buffered_bytes += size
        buffered_chars = sum(len(p) for p in self._buffer)
        if buffered_chars >= self._flush_chars or self._clock() - self._last_flush >= self._interval:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        text = "".join(self._buffer)
        self._buffer, self._buffered_bytes = [], 0
        self._sender.send(self._connection_id, delta_frame(self._turn, text))
        self._last_flush = self._clock()
        self.frames_sent += 1


def _split_utf8(text: str, max_bytes: int) -> list[str]:
    """Split text into pieces of at most ``max_bytes`` UTF-8 bytes."""
    if len(text.encode()) <= max_bytes:
        return [text]
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for char in text:
        n = len(char.encode())
        if size + n > max_bytes:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(char)
        size += n
    pieces.append("".join(current))
    return pieces
