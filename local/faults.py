"""A TCP proxy in front of a dependency that can be told to misbehave.

The handlers reach DynamoDB through this proxy, so people and tests can make the store fail the
ways real networks do, mid-conversation, without touching the store itself:

* ``pass``: bytes flow both ways;
* ``stall``: connections are accepted and held, nothing is answered (clients hit their timeouts);
* ``refuse``: connections are closed as soon as they are accepted;
* ``lose_replies``: requests reach the dependency, its replies never come back (a write that
  happened though the client timed out, the case that makes retries need idempotency).

Switching modes drops the connections already open, so pooled keep-alive connections cannot
carry on as if nothing happened.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal, get_args

Mode = Literal["pass", "stall", "refuse", "lose_replies"]
MODES: tuple[str, ...] = get_args(Mode)
_CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.mode: Mode = "pass"
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}; one of {', '.join(MODES)}")
        if mode != self.mode:
            self.mode = mode  # type: ignore[assignment]
            self._drop_all()

    async def close(self) -> None:
        self._drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _drop_all(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.transport.abort()
            return
        self._open.add(writer)
        try:
            if self.mode == "stall":
                # Read and discard until the client gives up or the mode changes.
                while await reader.read(_CHUNK):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._open.add(up_writer)
            try:
                replies = _discard(up_reader) if self.mode == "lose_replies" else _pipe(up_reader, writer)
                await asyncio.gather(_pipe(reader, up_writer), replies)
            finally:
                self._open.discard(up_writer)
                up_writer.transport.abort()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # The server is closing. Not re-raised: Python 3.11's stream callback calls
            # exception() on the cancelled task and logs a traceback per open connection.
            pass
        finally:
            self._open.discard(writer)
            writer.transport.abort()


async def _discard(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while await reader.read(_CHUNK):
            pass


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
