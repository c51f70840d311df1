"""The offline model: a deterministic stand-in for Claude that speaks the Messages API.

It is an HTTP transport for the SDK's own client, so requests are built, sent and the SSE
stream parsed by exactly the code that talks to Claude. Its replies make memory visible:
how many earlier turns it received, whether a summary or facts came with them, and the
earlier user messages it can see, shortened.

It can be told to misbehave, for demonstrations and fault tests, by a directive in the
user's message: ``[offline:429]`` (rate limited), ``[offline:529]`` (overloaded),
``[offline:cut]`` (the stream breaks midway), ``[offline:slow=SECONDS]`` (pause between
chunks).
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2

QUOTE_CHARS = 60
CHUNK_WORDS = 3
DIRECTIVE = re.compile(r"\[offline:(429|529|cut|slow=\d+(?:\.\d+)?)\]")
STATUS_ERRORS = {"429": (429, "rate_limit_error"), "529": (529, "overloaded_error")}


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= QUOTE_CHARS else flat[: QUOTE_CHARS - 1] + "…"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))


def compose_reply(system: str, messages: list[dict[str, Any]]) -> str:
    """The deterministic answer to a Messages API request."""
    *earlier, last = messages
    earlier_user = [_text_of(m["content"]) for m in earlier if m["role"] == "user"]
    lowered = system.lower()
    extras = [name for name in ("summary", "facts") if f"<{name}>" in lowered]
    said = _text_of(last["content"])
    if not earlier_user:
        memory = "I see no earlier turns of this conversation"
    else:
        memory = f"I see {len(earlier_user)} earlier turn{'s' if len(earlier_user) != 1 else ''}"
    memory += f" ({' and '.join(extras) if extras else 'no summary, no facts'})."
    lines = [f"[offline model] {memory}"]
    if earlier_user:
        lines.append(
            "Earlier you said: " + "; ".join(f'{i}. "{_shorten(t)}"' for i, t in enumerate(earlier_user, 1))
        )
    lines.append(f'You just said: "{_shorten(said)}".')
    return "\n".join(lines)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class _ReplyStream(httpx2.SyncByteStream):
    def __init__(self, model: str, reply: str, input_tokens: int, delay: float, cut: bool) -> None:
        self._model, self._reply, self._input_tokens, self._delay = model, reply, input_tokens, delay
        self._cut = cut

    def __iter__(self) -> Iterator[bytes]:
        message: dict[str, Any] = {
            "id": f"msg_offline_{uuid.uuid4().hex[:16]}",
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        yield _sse("message_start", {"type": "message_start", "message": message})
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        words = self._reply.split(" ")
        for start in range(0, len(words), CHUNK_WORDS):
            if self._cut and start >= len(words) // 2:
                raise httpx2.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            piece = " ".join(words[start : start + CHUNK_WORDS])
            if start + CHUNK_WORDS < len(words):
                piece += " "
            if self._delay:
                time.sleep(self._delay)
            yield _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": estimate_tokens(self._reply)},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})


class OfflineMessagesApi(httpx2.BaseTransport):
    """Answers ``POST /v1/messages`` (streamed or not) like the Messages API would."""

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self._delay = delay_seconds

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method != "POST" or not request.url.path.endswith("/v1/messages"):
            return _error(
                404, "not_found_error", f"{request.method} {request.url.path} is not served offline"
            )
        try:
            body = json.loads(request.read())
            messages = body["messages"]
            system = body.get("system") or ""
            system_text = system if isinstance(system, str) else _text_of(system)
            model = str(body["model"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "invalid_request_error", "malformed Messages API request")
        if not messages or messages[-1].get("role") != "user":
            return _error(400, "invalid_request_error", "the last message must come from the user")
        directive = DIRECTIVE.search(_text_of(messages[-1]["content"]))
        command = directive.group(1) if directive else ""
        if command in STATUS_ERRORS:
            status, kind = STATUS_ERRORS[command]
            return _error(status, kind, f"offline model told to answer {status}")
        delay = float(command.removeprefix("slow=")) if command.startswith("slow=") else self._delay
        reply = compose_reply(system_text, messages)
        prompt_text = system_text + "".join(_text_of(m["content"]) for m in messages)
        input_tokens = estimate_tokens(prompt_text)
        if body.get("stream"):
            return httpx2.Response(
                200,
                headers={"content-type": "text/event-stream"},
                stream=_ReplyStream(model, reply, input_tokens, delay, cut=command == "cut"),
            )
        return httpx2.Response(
            200,
            json={
                "id": f"msg_offline_{uuid.uuid4().hex[:16]}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": reply}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": estimate_tokens(reply)},
            },
        )


def _error(status: int, kind: str, message: str) -> httpx2.Response:
    return httpx2.Response(status, json={"type": "error", "error": {"type": kind, "message": message}})
