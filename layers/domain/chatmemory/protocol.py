"""The wire protocol: client frames in, server frames out, error codes.

``docs/protocol.md`` is the reference for what is here. Frames are plain dicts on the wire;
the models below validate what clients send and build what the server sends.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from chatmemory.config import StrategyName
from chatmemory.errors import BadRequest, ChatError, ErrorCode, FrameTooLarge, UnknownAction, shown_safely

if TYPE_CHECKING:
    from chatmemory.storage.session_meta import Listing

__all__ = ["ErrorCode"]

MemoryMode = Literal["full", "cache_only", "stateless"]

MAX_FRAME_BYTES = 32 * 1024  # API Gateway's WebSocket frame limit
# What the server builds a frame to at most (its JSON as sent, UTF-8): a margin under the limit,
# so that a limit counted as 32,000 bytes, or a field added later, still fits.
FRAME_BUDGET_BYTES = 28 * 1024


class NoticeCode(StrEnum):
    MEMORY_DEGRADED = "memory_degraded"
    MEMORY_UNAVAILABLE = "memory_unavailable"
    NOT_REMEMBERED = "not_remembered"
    MEMORY_TRUNCATED = "memory_truncated"


ClientMessageId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
]


class _ClientFrame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# Control characters other than tab, line feed and carriage return, and lone surrogates
# (JSON's "\ud800" escapes: no valid UTF-8 text has them, and no store could take them).
_FORBIDDEN_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


class SendMessage(_ClientFrame):
    action: Literal["sendMessage"]
    message: str
    client_message_id: ClientMessageId | None = Field(None, alias="clientMessageId")

    @field_validator("message")
    @classmethod
    def _no_forbidden_characters(cls, message: str) -> str:
        if _FORBIDDEN_CHARACTERS.search(message):
            raise ValueError("it contains control characters or invalid Unicode")
        return message


class GetSession(_ClientFrame):
    action: Literal["getSession"]
    # Page back: the N turns numbered below this one, instead of the last N.
    before: int | None = Field(None, ge=1)
    # One turn's whole text, as ``turn`` frames (a history entry may hold only its beginning).
    turn: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_question(self) -> GetSession:
        if self.before is not None and self.turn is not None:
            raise ValueError('give "before" or "turn", not both')
        return self


class NewSession(_ClientFrame):
    action: Literal["newSession"]
    # The new session's memory strategy, instead of the deployment's.
    memory_strategy: StrategyName | None = Field(None, alias="memoryStrategy")


class SetMemory(_ClientFrame):
    """The bound session's strategy and/or the principal's long-term memory (opt in or out)."""

    action: Literal["setMemory"]
    memory_strategy: StrategyName | None = Field(None, alias="memoryStrategy")
    long_term: bool | None = Field(None, alias="longTerm")

    @model_validator(mode="after")
    def _something_to_set(self) -> SetMemory:
        if self.memory_strategy is None and self.long_term is None:
            raise ValueError('give "memoryStrategy", "longTerm" or both')
        return self


class GetUserMemory(_ClientFrame):
    action: Literal["getUserMemory"]


FactKey = Annotated[str, StringConstraints(min_length=1, max_length=80)]


class ForgetUserMemory(_ClientFrame):
    action: Literal["forgetUserMemory"]
    key: FactKey | None = None  # one fact; without it, all of them (and the opt-in)


class DeleteSession(_ClientFrame):
    action: Literal["deleteSession"]


class ExportSession(_ClientFrame):
    action: Literal["exportSession"]


class DeleteMyData(_ClientFrame):
    action: Literal["deleteMyData"]


LIST_PAGE_MAX = 50
SessionTitle = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
SessionId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ListSessions(_ClientFrame):
    """A page of the principal's conversations, newest activity first."""

    action: Literal["listSessions"]
    cursor: str | None = Field(None, min_length=1, max_length=512)  # a previous page's ``next``
    limit: int | None = Field(None, ge=1, le=LIST_PAGE_MAX)


class OpenSession(_ClientFrame):
    """Switch this connection to one of the principal's conversations (at one of its turns)."""

    action: Literal["openSession"]
    session_id: SessionId = Field(alias="sessionId")
    turn: int | None = Field(None, ge=1)


class StopReply(_ClientFrame):
    """End the reply being written for this connection's session."""

    action: Literal["stopReply"]


class RenameSession(_ClientFrame):
    action: Literal["renameSession"]
    title: SessionTitle
    session_id: SessionId | None = Field(None, alias="sessionId")  # without it, the bound one

    @field_validator("title")
    @classmethod
    def _printable(cls, title: str) -> str:
        if _FORBIDDEN_CHARACTERS.search(title) or any(c in title for c in "\n\r\t"):
            raise ValueError("it contains control characters or invalid Unicode")
        return title


AnyClientFrame = (
    SendMessage
    | GetSession
    | NewSession
    | DeleteSession
    | ExportSession
    | DeleteMyData
    | SetMemory
    | GetUserMemory
    | ForgetUserMemory
    | ListSessions
    | OpenSession
    | RenameSession
    | StopReply
)
ClientFrame = Annotated[AnyClientFrame, Field(discriminator="action")]
_client_frame: TypeAdapter[AnyClientFrame] = TypeAdapter(ClientFrame)
KNOWN_ACTIONS = frozenset(
    {
        "sendMessage",
        "getSession",
        "newSession",
        "deleteSession",
        "exportSession",
        "deleteMyData",
        "setMemory",
        "getUserMemory",
        "forgetUserMemory",
        "listSessions",
        "openSession",
        "renameSession",
        "stopReply",
    }
)


def parse_client_frame(body: str | None) -> AnyClientFrame:
    """Parse one client frame, raising a ``ChatError`` a person can read on bad input."""
    try:
        raw = json.loads(body or "")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest('The message is not valid JSON. Send an object such as {"action": ...}.') from exc
    if not isinstance(raw, dict):
        raise BadRequest('The message must be a JSON object with an "action" field.')
    action = raw.get("action")
    if action not in KNOWN_ACTIONS:
        raise UnknownAction(action if isinstance(action, str) else None, sorted(KNOWN_ACTIONS))
    try:
        return _client_frame.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "frame"
        if not shown_safely(where):
            where = "(a field whose name is not shown)"
        reason = str(first["msg"]).removeprefix("Value error, ").rstrip(".")
        raise BadRequest(f'Field "{where}" is invalid: {reason}.') from exc


# ---- server frames -------------------------------------------------------------------------


class HistoryTurn(BaseModel):
    turn: int
    user: str
    assistant: str | None
    at: int


def session_frame(
    session_id: str,
    resumed: bool,
    history: list[HistoryTurn],
    memory_mode: MemoryMode,
    guest_token: str | None = None,
    has_more: bool | None = None,
    memory_strategy: str | None = None,
    before: int | None = None,
) -> dict[str, Any]:
    """A ``session`` frame holding the newest of ``history`` (oldest first) that fit in
    ``FRAME_BUDGET_BYTES``; the newest turn, when it alone is too large, is cut short and its
    ``truncated`` names the fields cut. ``hasMore`` is true when turns were left out, else ``has_more``
    (whether turns older than all of ``history`` remain; ``None``: not known, not sent)."""
    frame: dict[str, Any] = {
        "type": "session",
        "sessionId": session_id,
        "resumed": resumed,
        "history": [],
        "memoryMode": memory_mode,
    }
    if guest_token:
        frame["guestToken"] = guest_token
    if memory_strategy is not None:
        frame["memoryStrategy"] = memory_strategy
    if before is not None:
        frame["before"] = before
    # Sized with ``hasMore`` present: the field may be added below.
    room = FRAME_BUDGET_BYTES - len(encode({**frame, "hasMore": False}))
    entries: list[dict[str, Any]] = []
    for turn in reversed(history):
        entry = _history_entry(turn)
        size = len(encode(entry)) + (1 if entries else 0)  # the comma between entries
        if size > room:
            if not entries:
                entries.append(_truncated_entry(turn, room))
            break
        entries.append(entry)
        room -= size
    frame["history"] = entries[::-1]
    if len(entries) < len(history):
        frame["hasMore"] = True
    elif has_more is not None:
        frame["hasMore"] = has_more
    return frame


def _history_entry(turn: HistoryTurn) -> dict[str, Any]:
    return {"turn": turn.turn, "user": turn.user, "assistant": turn.assistant, "at": turn.at}


def _truncated_entry(turn: HistoryTurn, room: int) -> dict[str, Any]:
    """The turn's entry cut to ``room`` bytes: the beginning of its message and of its reply
    (each gets half, or what the other leaves), ``truncated`` naming the fields cut short."""
    entry = {**_history_entry(turn), "user": "", "truncated": ["user", "assistant"]}
    if turn.assistant is not None:
        entry["assistant"] = ""
    left = max(room - len(encode(entry)), 0)
    user_size = _text_bytes(turn.user)
    reply_size = _text_bytes(turn.assistant) if turn.assistant is not None else 0
    user_share = max(left // 2, left - reply_size)
    entry["user"] = _prefix_within(turn.user, user_share)
    if turn.assistant is not None:
        entry["assistant"] = _prefix_within(turn.assistant, left - min(user_size, user_share))
    entry["truncated"] = [name for name in ("user", "assistant") if entry[name] != getattr(turn, name)]
    return entry


def _text_bytes(text: str) -> int:
    """Bytes a string takes in an encoded frame, without its quotes."""
    return len(encode_text(text)) - 2


def _prefix_within(text: str, max_bytes: int) -> str:
    """The longest beginning of ``text`` that takes at most ``max_bytes`` in an encoded frame
    (escapes and UTF-8 counted)."""
    if _text_bytes(text) <= max_bytes:
        return text
    low, high = 0, min(len(text), max(max_bytes, 0))  # a character takes at least one byte
    while low < high:
        middle = (low + high + 1) // 2
        if _text_bytes(text[:middle]) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def turn_frames(session_id: str, turn: HistoryTurn) -> list[dict[str, Any]]:
    """One turn's whole text over ``turn`` frames of at most ``FRAME_BUDGET_BYTES`` each: the
    concatenated ``user`` of parts 1..parts is the message, the concatenated ``assistant``
    the reply (``null`` in every part when the turn has none)."""
    no_reply = turn.assistant is None
    user, reply = turn.user, turn.assistant or ""
    chunks: list[tuple[str, str]] = []
    while user or reply or not chunks:
        envelope = _turn_frame(session_id, turn, 999_999, 999_999, "", None if no_reply else "")
        room = FRAME_BUDGET_BYTES - len(encode(envelope))
        user_part = _prefix_within(user, room)
        room -= _text_bytes(user_part)
        reply_part = _prefix_within(reply, room) if user_part == user else ""
        if chunks and not (user_part or reply_part):
            raise FrameTooLarge(len(encode(envelope)))
        chunks.append((user_part, reply_part))
        user, reply = user[len(user_part) :], reply[len(reply_part) :]
    return [
        _turn_frame(session_id, turn, i, len(chunks), user_part, None if no_reply else reply_part)
        for i, (user_part, reply_part) in enumerate(chunks, start=1)
    ]


def _turn_frame(
    session_id: str, turn: HistoryTurn, part: int, parts: int, user: str, assistant: str | None
) -> dict[str, Any]:
    return {
        "type": "turn",
        "sessionId": session_id,
        "turn": turn.turn,
        "at": turn.at,
        "part": part,
        "parts": parts,
        "user": user,
        "assistant": assistant,
    }


def sessions_frame(listings: list[Listing], next_cursor: str | None, current: str | None) -> dict[str, Any]:
    """The answer to ``listSessions``: a page of conversations and the cursor of the next
    (``null`` after the last). A page is at most 50 entries of at most 80-character titles,
    far below the frame limit."""
    return {
        "type": "sessions",
        "sessions": [
            {
                "sessionId": listing.session_id,
                "title": listing.title,
                "createdAt": listing.created_at,
                "lastActiveAt": listing.last_active // 1000,
                "turns": listing.turns,
                "memoryStrategy": listing.strategy,
                "expiresAt": listing.expires_at,
                "current": listing.session_id == current,
            }
            for listing in listings
        ],
        "next": next_cursor,
    }


def renamed_frame(session_id: str, title: str) -> dict[str, Any]:
    return {"type": "renamed", "sessionId": session_id, "title": title}


def memory_frame(session_id: str, memory_strategy: str, long_term: bool) -> dict[str, Any]:
    """The answer to ``setMemory``: the session's strategy and the principal's opt-in."""
    return {
        "type": "memory",
        "sessionId": session_id,
        "memoryStrategy": memory_strategy,
        "longTerm": long_term,
    }


def user_memory_frames(
    long_term: bool, facts: list[dict[str, Any]], exported_at: int
) -> list[dict[str, Any]]:
    """``userMemory`` frames: the principal's long-term facts, as many per frame as fit in
    ``FRAME_BUDGET_BYTES`` (usually one frame); the facts of parts 1..parts, concatenated, are all of them."""
    chunks: list[list[dict[str, Any]]] = [[]]
    size = 0
    for fact in facts:
        fact_size = len(encode(fact)) + 1
        if chunks[-1] and size + fact_size > FRAME_BUDGET_BYTES - _EXPORT_ENVELOPE_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(fact)
        size += fact_size
    return [
        {
            "type": "userMemory",
            "longTerm": long_term,
            "exportedAt": exported_at,
            "part": i,
            "parts": len(chunks),
            "facts": chunk,
        }
        for i, chunk in enumerate(chunks, start=1)
    ]


def deleted_frame(session_id: str) -> dict[str, Any]:
    return {"type": "deleted", "sessionId": session_id}


def deleted_all_frame(session_id: str, sessions: int, items: int) -> dict[str, Any]:
    """``deleted`` for ``deleteMyData``: every session of the principal, and its long-term memory."""
    return {**deleted_frame(session_id), "scope": "principal", "sessions": sessions, "items": items}


# Room in an export frame for everything around its ``data`` (type, id, part numbers).
_EXPORT_ENVELOPE_BYTES = 256


def export_frames(session_id: str, document: dict[str, Any]) -> list[dict[str, Any]]:
    """The document as JSON text split over ``export`` frames of at most ``FRAME_BUDGET_BYTES``; the
    concatenated ``data`` of parts 1..parts is the document's JSON."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    budget = FRAME_BUDGET_BYTES - _EXPORT_ENVELOPE_BYTES - len(session_id.encode())
    chunks: list[str] = []
    start = 0
    while start < len(text) or not chunks:
        size = min(len(text) - start, budget)
        # Escaping may make a chunk grow (up to six bytes a character): shrink until it fits.
        while size > 1 and len(encode_text(text[start : start + size])) > budget:
            size = max(1, size * budget // len(encode_text(text[start : start + size])) - 1)
        chunks.append(text[start : start + size])
        start += size
        if start >= len(text):
            break
    return [
        {"type": "export", "sessionId": session_id, "part": i, "parts": len(chunks), "data": chunk}
        for i, chunk in enumerate(chunks, start=1)
    ]


def encode_text(text: str) -> bytes:
    """A string as it appears, quoted and escaped, in an encoded frame."""
    return json.dumps(text, ensure_ascii=False).encode()


def delta_frame(turn: int, text: str) -> dict[str, Any]:
    return {"type": "delta", "turn": turn, "text": text}


def done_frame(
    turn: int,
    memory_mode: MemoryMode,
    truncated: bool,
    input_tokens: int,
    output_tokens: int,
    *,
    cache_read_input_tokens: int | None = None,
    cache_creation_input_tokens: int | None = None,
    budget: dict[str, int] | None = None,
    strategy: str | None = None,
    retrieval: str | None = None,
    retrieved_turns: list[int] | None = None,
    cross_session: str | None = None,
    cross_session_turns: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``done``; the optional fields (prompt cache counts, the budget's split, the memory
    strategy, how retrieval searched and which earlier turns it put in the prompt) are added
    when known."""
    usage: dict[str, Any] = {"inputTokens": input_tokens, "outputTokens": output_tokens}
    if cache_read_input_tokens is not None:
        usage["cacheReadInputTokens"] = cache_read_input_tokens
    if cache_creation_input_tokens is not None:
        usage["cacheCreationInputTokens"] = cache_creation_input_tokens
    if budget is not None:
        usage["budget"] = budget
    frame: dict[str, Any] = {
        "type": "done",
        "turn": turn,
        "memoryMode": memory_mode,
        "truncated": truncated,
        "usage": usage,
    }
    if strategy is not None:
        frame["memoryStrategy"] = strategy
    if retrieval is not None:
        frame["retrieval"] = retrieval
    if retrieved_turns is not None:
        frame["retrievedTurns"] = retrieved_turns
    if cross_session is not None:  # the principal's other sessions were searched (opted in)
        frame["crossSession"] = cross_session
    if cross_session_turns is not None:
        frame["crossSessionTurns"] = cross_session_turns
    return frame


def notice_frame(code: NoticeCode, message: str) -> dict[str, Any]:
    return {"type": "notice", "code": str(code), "message": message}


def error_frame(error: ChatError, request_id: str | None) -> dict[str, Any]:
    frame = {"type": "error", "code": str(error.code), "message": error.message, "requestId": request_id}
    return {**frame, **error.fields()}


def encode(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode()
