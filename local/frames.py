"""API Gateway's per-frame limit on what clients send (32 KB), which aiohttp cannot express.

aiohttp checks whole messages only. This guard sits in front of aiohttp's WebSocket parser and
reads just the frame headers as bytes arrive: an oversize frame is dropped unparsed and reported,
everything else is passed through unchanged (so the client's closing handshake still works).
Browsers send each message as one frame, so for them this is the effective message limit, as
it is on AWS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FrameSizeGuard:
    def __init__(self, parser: Any, max_frame_bytes: int, on_too_big: Callable[[], None]) -> None:
        self._parser, self._limit, self._on_too_big = parser, max_frame_bytes, on_too_big
        self._header = bytearray()  # the current frame's header, until it is complete
        self._payload_left = 0  # bytes of the current frame's payload still to come
        self._dropping = False  # whether that payload belongs to an oversize frame

    def feed_data(self, data: bytes | bytearray | memoryview) -> tuple[bool, bytes]:
        passed = self._filter(bytes(data))
        return self._parser.feed_data(passed) if passed else (False, b"")

    def feed_eof(self) -> None:
        self._parser.feed_eof()

    def _filter(self, data: bytes) -> bytes:
        out, i = bytearray(), 0
        while i < len(data):
            if self._payload_left:
                n = min(self._payload_left, len(data) - i)
                if not self._dropping:
                    out += data[i : i + n]
                self._payload_left -= n
                i += n
                continue
            self._header.append(data[i])
            i += 1
            size = _header_size(self._header)
            if size is None or len(self._header) < size:
                continue
            length = _payload_length(self._header)
            self._dropping = length > self._limit
            if self._dropping:
                self._on_too_big()
            else:
                out += self._header
            self._header.clear()
            self._payload_left = length
        return bytes(out)


def _header_size(header: bytearray) -> int | None:
    if len(header) < 2:
        return None
    code = header[1] & 0x7F
    extended = {126: 2, 127: 8}.get(code, 0)
    mask = 4 if header[1] & 0x80 else 0
    return 2 + extended + mask


def _payload_length(header: bytearray) -> int:
    code = header[1] & 0x7F
    if code == 126:
        return int.from_bytes(header[2:4], "big")
    if code == 127:
        return int.from_bytes(header[2:10], "big")
    return code
