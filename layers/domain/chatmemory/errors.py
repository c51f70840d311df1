"""Domain errors. Each carries the wire error code and a sentence a person understands;
``protocol.error_frame`` is the one place that turns them into frames."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatmemory.turns import Turn


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNKNOWN_ACTION = "unknown_action"
    EMPTY_MESSAGE = "empty_message"
    MESSAGE_TOO_LARGE = "message_too_large"
    BUSY = "busy"
    FORBIDDEN = "forbidden"
    LLM_UNAVAILABLE = "llm_unavailable"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal"


def shown_safely(text: str, limit: int = 40) -> bool:
    """Whether client-sent text may be echoed in an error message: short, printable ASCII."""
    return len(text) <= limit and text.isascii() and text.isprintable()


class ChatError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def fields(self) -> dict[str, Any]:
        """Fields the ``error`` frame carries besides code and message."""
        return {}


class BadRequest(ChatError):
    code = ErrorCode.BAD_REQUEST


class UnknownAction(ChatError):
    code = ErrorCode.UNKNOWN_ACTION

    def __init__(self, action: str | None, known: list[str]) -> None:
        shown = (
            f'"{action}"' if action and shown_safely(action) else ("missing" if not action else "(not shown)")
        )
        super().__init__(f"Unknown action {shown}. Known actions: {', '.join(known)}.")


class EmptyMessage(ChatError):
    code = ErrorCode.EMPTY_MESSAGE

    def __init__(self) -> None:
        super().__init__("The message is empty. Type something before sending.")


class MessageTooLarge(ChatError):
    code = ErrorCode.MESSAGE_TOO_LARGE

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"The message has {size} characters; the limit is {limit}. Please shorten it.")


class Busy(ChatError):
    code = ErrorCode.BUSY

    def __init__(self) -> None:
        super().__init__("Another message in this conversation is being answered. Try again in a moment.")


class InProgress(ChatError):
    code = ErrorCode.BUSY

    def __init__(self) -> None:
        super().__init__(
            "This message is still being answered; the answer goes to the connection that sent it first."
        )


class NotAnsweredTwice(ChatError):
    code = ErrorCode.LLM_UNAVAILABLE

    def __init__(self) -> None:
        super().__init__(
            "The assistant could not answer this message earlier, and a message is never answered twice. "
            "Send it again as a new message to retry."
        )


class RateLimited(ChatError):
    """A principal's quota is used up: nothing was stored and the model was not called."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, limit: str, retry_after_seconds: int) -> None:
        self.limit, self.retry_after_seconds = limit, max(1, retry_after_seconds)
        what = "messages" if limit == "messages" else "the day's share of the assistant"
        super().__init__(
            f"You have used up {what} for now. Try again in {_duration(self.retry_after_seconds)}."
        )

    def fields(self) -> dict[str, Any]:
        return {"limit": self.limit, "retryAfterSeconds": self.retry_after_seconds}


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    if seconds < 7_200:
        return f"{seconds // 60} minutes"
    return f"{seconds // 3_600} hours"


class Forbidden(ChatError):
    code = ErrorCode.FORBIDDEN


class NoSession(ChatError):
    code = ErrorCode.BAD_REQUEST

    def __init__(self) -> None:
        super().__init__("This connection has no conversation. Reconnect to start one.")


class MemoryUnavailable(ChatError):
    code = ErrorCode.INTERNAL

    def __init__(self) -> None:
        super().__init__("I can't reach the conversation history right now. Please try again in a moment.")


class LlmUnavailable(ChatError):
    code = ErrorCode.LLM_UNAVAILABLE

    def __init__(self, detail: str = "", saved: bool = True) -> None:
        self.detail = detail
        super().__init__(
            "The assistant could not answer right now"
            + (f" ({detail})" if detail else "")
            + (
                ". Your message is saved; please try again in a moment."
                if saved
                else ". Please try again in a moment."
            )
        )


class InternalError(ChatError):
    code = ErrorCode.INTERNAL

    def __init__(self) -> None:
        super().__init__("Something went wrong on our side. Please try again.")


class FrameTooLarge(ChatError):
    """A frame the server built is over the WebSocket limit: a bug, never the user's doing."""

    code = ErrorCode.INTERNAL

    def __init__(self, size: int) -> None:
        self.size = size
        super().__init__(
            "This answer was too large to send over the connection, which is a fault on our side. "
            "Your conversation is safe; reloading the page will not help, so please report it."
        )


class TurnConflict(Exception):
    """The turn number was taken: a concurrent writer, or a stale cache. Not shown to users."""


class ClientGone(Exception):
    """The WebSocket connection is closed (API Gateway answered GoneException)."""


class DuplicateTurn(Exception):
    """A turn with this message's ``clientMessageId`` (or this frame's API Gateway message id)
    is stored already: the message is not taken a second time. Not shown to users as such."""

    def __init__(self, turn: Turn) -> None:
        super().__init__(f"turn {turn.turn} of {turn.session_id} has this message")
        self.turn = turn


class SessionErased(Exception):
    """The connection is bound to a session that was erased (from another connection)."""
