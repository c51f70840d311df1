"""A terminal client for the chat backend (the wire protocol is docs/protocol.md).

    python -m local.client ws://127.0.0.1:8080/ws                 # interactive
    python -m local.client ws://127.0.0.1:8080/ws -m "hello"      # one message, then exit
    python -m local.client wss://…/prod --session 9f0c…           # resume a session

The reply goes to standard output as it streams; the session id, notices and errors go to
standard error, so ``-m`` output can be piped. Exit status: 0 when the reply finished, 1 on an
``error`` frame, 3 when the connection failed or dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

EXIT_OK = 0
EXIT_ERROR_FRAME = 1
EXIT_CONNECTION = 3
EXIT_INTERRUPTED = 130

MEMORY_WORDS = {
    "full": "full",
    "cache_only": "cache only (this turn is saved when the store is back)",
    "stateless": "off (nothing is remembered)",
}


class ConnectionFailed(Exception):
    """The socket could not be opened or closed before the answer came."""


@dataclass
class Reply:
    text: str = ""
    turn: int | None = None
    error: dict[str, Any] | None = None


def with_query(url: str, **params: str | None) -> str:
    """``url`` with the given query parameters set (``None`` values left out)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += [(k, v) for k, v in params.items() if v]
    return urlunsplit(parts._replace(query=urlencode(query)))


def client_message_id() -> str:
    return f"cli-{secrets.token_hex(8)}"


class ChatClient:
    """One connection: ask for the session, then send messages one at a time."""

    def __init__(self, socket: Any, out: TextIO, err: TextIO, *, timeout: float) -> None:
        self._socket = socket
        self._out, self._err = out, err
        self._timeout = timeout
        self.session_id: str | None = None
        self.token: str | None = None

    async def _frame(self) -> dict[str, Any]:
        while True:
            try:
                raw = await asyncio.wait_for(self._socket.recv(), self._timeout)
            except ConnectionClosed as exc:
                raise ConnectionFailed(f"the connection closed ({exc})") from exc
            except TimeoutError as exc:
                raise ConnectionFailed(f"no answer within {self._timeout:g} s") from exc
            try:
                frame = json.loads(raw)
            except ValueError:
                continue
            if isinstance(frame, dict):
                return frame

    def _say(self, text: str) -> None:
        print(text, file=self._err, flush=True)

    async def get_session(self) -> dict[str, Any]:
        await self._socket.send(json.dumps({"action": "getSession"}))
        while True:
            frame = await self._frame()
            if frame.get("type") == "session":
                self.session_id = str(frame.get("sessionId"))
                self.token = frame.get("guestToken") or self.token
                return frame
            if frame.get("type") == "error":
                raise ConnectionFailed(f"the server refused getSession: {frame.get('message')}")

    async def send(self, message: str, *, prefix: str = "") -> Reply:
        """Send one message and stream its reply to ``out``."""
        frame_out = {"action": "sendMessage", "message": message, "clientMessageId": client_message_id()}
        await self._socket.send(json.dumps(frame_out))
        reply = Reply()
        started = False
        while True:
            frame = await self._frame()
            kind = frame.get("type")
            if kind == "delta" and isinstance(frame.get("text"), str):
                if not started and prefix:
                    self._out.write(prefix)
                started = True
                reply.turn = frame.get("turn")
                reply.text += frame["text"]
                self._out.write(frame["text"])
                self._out.flush()
            elif kind == "done":
                self._out.write("\n")
                self._out.flush()
                mode = frame.get("memoryMode")
                if mode and mode != "full":
                    self._say(f"(memory: {MEMORY_WORDS.get(mode, mode)})")
                return reply
            elif kind == "notice":
                if started:
                    self._out.write("\n")
                self._say(f"Note: {frame.get('message', '')}")
            elif kind == "error":
                if started:
                    self._out.write("\n")
                    self._out.flush()
                self._say(f"Error: {frame.get('message', '')} [{frame.get('code', 'error')}]")
                reply.error = frame
                return reply
            # other frame types: ignored, as the protocol asks


def describe_session(frame: dict[str, Any]) -> str:
    history = frame.get("history") or []
    if frame.get("resumed"):
        what = f"resumed, {len(history)} earlier turn{'s' if len(history) != 1 else ''}"
        what += ", older ones not shown" if frame.get("hasMore") else ""
    else:
        what = "new"
    mode = frame.get("memoryMode", "full")
    memory = "" if mode == "full" else f", memory {MEMORY_WORDS.get(mode, mode)}"
    return f"Session {frame.get('sessionId')} ({what}{memory})"


def print_history(frame: dict[str, Any], out: TextIO) -> None:
    for turn in frame.get("history") or []:
        cut = turn.get("truncated") or []
        more = " [… cut short: this turn is longer than a frame]"
        print(f"you> {turn.get('user', '')}{more if 'user' in cut else ''}", file=out)
        assistant = turn.get("assistant")
        shown = f"{assistant}{more if 'assistant' in cut else ''}"
        reply = shown if assistant is not None else "(no reply: this turn failed)"
        print(f"bot> {reply}", file=out)
    out.flush()


async def read_line(prompt: str) -> str | None:
    """One line from standard input without blocking the event loop; ``None`` at end of input."""

    def read() -> str | None:
        if sys.stdin.isatty():
            try:
                return input(prompt)
            except EOFError:
                return None
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None

    return await asyncio.to_thread(read)


async def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    url = with_query(args.url, session_id=args.session, token=args.token)
    try:
        async with websockets.connect(url, open_timeout=args.timeout, max_size=2**20) as socket:
            client = ChatClient(socket, out, err, timeout=args.timeout)
            client.token = args.token
            session = await client.get_session()
            print(describe_session(session), file=err, flush=True)
            if session.get("guestToken"):  # a new guest: say how to come back as the same guest
                resume = f"--session {session.get('sessionId')} --token {session['guestToken']}"
                print(f"Resume with: {resume}", file=err, flush=True)
            if args.message is not None:
                reply = await client.send(args.message)
                return EXIT_ERROR_FRAME if reply.error else EXIT_OK
            return await interactive(client, session, out, err)
    except ConnectionFailed as exc:
        print(f"Connection failed: {exc}", file=err, flush=True)
    except (OSError, InvalidURI, InvalidHandshake, TimeoutError) as exc:
        print(f"Could not connect to {args.url}: {exc or type(exc).__name__}", file=err, flush=True)
    except ConnectionClosed as exc:
        print(f"The connection closed: {exc}", file=err, flush=True)
    return EXIT_CONNECTION


async def interactive(client: ChatClient, session: dict[str, Any], out: TextIO, err: TextIO) -> int:
    print_history(session, out)
    print("Type a message and press Enter; /quit or Ctrl-D to leave.", file=err, flush=True)
    status = EXIT_OK
    while True:
        line = await read_line("you> ")
        if line is None or line.strip() in {"/quit", "/exit"}:
            if client.session_id:
                token = f" --token {client.token}" if client.token else ""
                print(f"Resume with: --session {client.session_id}{token}", file=err, flush=True)
            return status
        if not line.strip():
            continue
        reply = await client.send(line, prefix="bot> ")
        status = EXIT_ERROR_FRAME if reply.error else EXIT_OK


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m local.client",
        description="Chat with the backend from a terminal: the reply streams as it is generated.",
    )
    parser.add_argument("url", help="the WebSocket URL, e.g. ws://127.0.0.1:8080/ws or wss://…/prod")
    parser.add_argument("--session", metavar="ID", help="resume this session (the id printed at start)")
    parser.add_argument("-m", "--message", help="send this one message, print the reply and exit")
    parser.add_argument("--token", help="your token: the guest token printed at start, or an OIDC token")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server (60)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
