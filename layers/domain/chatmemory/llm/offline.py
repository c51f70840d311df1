"""The offline model: a deterministic stand-in for Claude that speaks the Messages API.

It is an HTTP transport for the SDK's own client, so requests are built, sent and the SSE
stream parsed by exactly the code that talks to Claude. Its replies make memory visible:
how many earlier turns it received, whether a summary, facts or the user's long-term facts
came with them, and the earlier user messages it can see, shortened.

It also does the memory tasks, recognised by their marker in the system prompt: it extends a
summary with the user's first-person statements, and extracts facts from phrasings such as
"my name is X", "I prefer X", "my deadline is X", "I decided X" (both deterministic). And it
simulates Anthropic's prompt cache: a request whose prefix, up to a ``cache_control``
breakpoint, matches one an earlier request marked reports it as ``cache_read_input_tokens``.

It can be told to misbehave, for demonstrations and fault tests, by a directive in the
user's message: ``[offline:429]`` (rate limited), ``[offline:529]`` (overloaded),
``[offline:cut]`` (the stream breaks midway), ``[offline:slow=SECONDS]`` (pause between
chunks).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import httpx2

from chatmemory.memory.tasks import FACTS_TASK, SUMMARY_TASK

QUOTE_CHARS = 60
CHUNK_WORDS = 3
DIRECTIVE = re.compile(r"\[offline:(429|529|cut|slow=\d+(?:\.\d+)?)\]")
STATUS_ERRORS = {"429": (429, "rate_limit_error"), "529": (529, "overloaded_error")}
CACHE_LOOKBACK_BLOCKS = 20  # how far before a breakpoint the API looks for an earlier one
CACHE_ENTRIES = 10_000
SUMMARY_LINES = 40  # an extractive summary keeps this many statements, the newest
FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|my|we|our)\b", re.IGNORECASE)
_CLAUSE = r"([^.!?;\n]{1,120})"
FACT_PATTERNS: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"\bmy name is " + _CLAUSE, re.IGNORECASE), "name"),
    (re.compile(r"\bcall me " + _CLAUSE, re.IGNORECASE), "name"),
    (re.compile(r"\bi (?:prefer|like|love) " + _CLAUSE, re.IGNORECASE), "preference"),
    (re.compile(r"\bi(?:'ve| have)? decided (?:to |that |on )?" + _CLAUSE, re.IGNORECASE), "decision"),
    (re.compile(r"\bmy ((?:[a-z]+ ){0,2}?[a-z]+) (?:is|are) " + _CLAUSE, re.IGNORECASE), None),
]
TURN_USER = re.compile(r"<user>(.*?)</user>", re.DOTALL)


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
    if "<user-facts>" in lowered:
        extras.append("long-term facts")
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


def compose_task_reply(system: str, messages: list[dict[str, Any]]) -> str | None:
    """The answer to a memory task, or ``None`` when the request is a chat turn."""
    said = _text_of(messages[-1]["content"])
    if SUMMARY_TASK in system:
        return _summarize(said)
    if FACTS_TASK in system:
        return json.dumps(_extract_facts(said))
    return None


def _section(text: str, tag: str) -> str:
    found = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return found.group(1).strip() if found else ""


def _statements(text: str) -> list[str]:
    """The user's sentences that say something about them (first person), in order."""
    found = []
    for user in TURN_USER.findall(text):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(user.split())):
            if FIRST_PERSON.search(sentence):
                found.append(sentence[:160])
    return found


def _summarize(request: str) -> str:
    lines = [line for line in _section(request, "summary").splitlines() if line.strip()]
    lines += [f"- The user said: {s}" for s in _statements(request)]
    return "\n".join(lines[-SUMMARY_LINES:]) or "- Nothing of note was said yet."


def _extract_facts(request: str) -> list[dict[str, str]]:
    changes: dict[str, str] = {}
    for user in TURN_USER.findall(request):
        for pattern, key in FACT_PATTERNS:
            for match in pattern.finditer(user):
                value = match.group(match.lastindex or 1).strip(" ,")
                name = key or match.group(1).lower()
                changes[name] = value
    return [{"key": k, "value": v} for k, v in changes.items()]


class PromptCache:
    """Anthropic's prompt cache, simulated: a request's blocks (system, then each message) up to
    its ``cache_control`` breakpoint are written; a later request reads the longest earlier
    entry that is a prefix of its own, looking back up to 20 blocks from its breakpoint."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def usage(self, system: Any, messages: list[dict[str, Any]]) -> tuple[int, int, int]:
        """(input, cache read, cache creation) tokens of a request."""
        blocks = [("system", _text_of(system) if not isinstance(system, str) else system)]
        blocks += [(str(m["role"]), _text_of(m["content"])) for m in messages]
        marked = [_marked(system)] + [_marked(m["content"]) for m in messages]
        total = estimate_tokens("".join(text for _, text in blocks))
        if not any(marked):
            return total, 0, 0
        breakpoint_at = max(i for i, m in enumerate(marked) if m)
        digests, chars, digest = [], [], hashlib.sha256()
        length = 0
        for role, text in blocks[: breakpoint_at + 1]:
            digest.update(f"{role}\x00{len(text)}\x00{text}".encode())
            digests.append(digest.hexdigest())
            length += len(text)
            chars.append(length)
        with self._lock:
            hit = next(
                (
                    i
                    for i in range(breakpoint_at, max(-1, breakpoint_at - CACHE_LOOKBACK_BLOCKS - 1), -1)
                    if digests[i] in self._entries
                ),
                None,
            )
            self._entries[digests[breakpoint_at]] = None
            self._entries.move_to_end(digests[breakpoint_at])
            while len(self._entries) > CACHE_ENTRIES:
                self._entries.popitem(last=False)
        read = math.ceil(chars[hit] / 4) if hit is not None else 0
        written = math.ceil(chars[breakpoint_at] / 4) - read
        return max(0, total - read - written), read, written


def _marked(content: Any) -> bool:
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("cache_control") for b in content)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class _ReplyStream(httpx2.SyncByteStream):
    def __init__(self, model: str, reply: str, usage: dict[str, int], delay: float, cut: bool) -> None:
        self._model, self._reply, self._usage, self._delay = model, reply, usage, delay
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
            "usage": {**self._usage, "output_tokens": 0},
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
    """Answers ``POST /v1/messages`` (streamed or not) and ``POST /v1/messages/count_tokens``
    like the Messages API would."""

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self._delay = delay_seconds
        self._cache = PromptCache()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST" and request.url.path.endswith("/v1/messages/count_tokens"):
            return self._count_tokens(request)
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
        reply = compose_task_reply(system_text, messages) or compose_reply(system_text, messages)
        fresh, read, written = self._cache.usage(system, messages)
        usage = {
            "input_tokens": fresh,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written,
        }
        if body.get("stream"):
            return httpx2.Response(
                200,
                headers={"content-type": "text/event-stream"},
                stream=_ReplyStream(model, reply, usage, delay, cut=command == "cut"),
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
                "usage": {**usage, "output_tokens": estimate_tokens(reply)},
            },
        )

    def _count_tokens(self, request: httpx2.Request) -> httpx2.Response:
        try:
            body = json.loads(request.read())
            tokens = _count(body.get("system") or "", body["messages"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return _error(400, "invalid_request_error", "malformed count_tokens request")
        return httpx2.Response(200, json={"input_tokens": tokens})


def _count(system: Any, messages: list[dict[str, Any]]) -> int:
    """The offline model's count of a request's input, as its usage reports it."""
    text = system if isinstance(system, str) else _text_of(system)
    return estimate_tokens(text + "".join(_text_of(m["content"]) for m in messages))


def _error(status: int, kind: str, message: str) -> httpx2.Response:
    return httpx2.Response(status, json={"type": "error", "error": {"type": kind, "message": message}})
