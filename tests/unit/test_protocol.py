"""Client frames are parsed strictly; every refusal has a code and a sentence."""

from __future__ import annotations

import contextlib
import json

import pytest
from chatmemory.errors import BadRequest, ChatError, UnknownAction
from chatmemory.protocol import (
    MAX_FRAME_BYTES,
    GetSession,
    SendMessage,
    done_frame,
    encode,
    parse_client_frame,
)
from hypothesis import given
from hypothesis import strategies as st


def test_send_message_with_client_message_id() -> None:
    frame = parse_client_frame(
        json.dumps({"action": "sendMessage", "message": "hi", "clientMessageId": "m-1"})
    )
    assert frame == SendMessage(action="sendMessage", message="hi", clientMessageId="m-1")


def test_get_session() -> None:
    assert isinstance(parse_client_frame('{"action": "getSession"}'), GetSession)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (None, BadRequest),
        ("", BadRequest),
        ("{", BadRequest),
        ('"a string"', BadRequest),
        ('{"action": 3}', UnknownAction),
        ('{"action": "getSession", "sessionId": "x"}', BadRequest),
        ('{"action": "sendMessage", "message": null}', BadRequest),
        ('{"action": "sendMessage", "message": "hi", "clientMessageId": "has space"}', BadRequest),
    ],
)
def test_refusals(body: str | None, error: type[ChatError]) -> None:
    with pytest.raises(error) as raised:
        parse_client_frame(body)
    assert raised.value.message[0].isupper() and raised.value.message.endswith(".")


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_cleanly(body: str) -> None:
    with contextlib.suppress(ChatError):
        parse_client_frame(body)


@given(
    st.dictionaries(
        st.sampled_from(["action", "message", "clientMessageId", "x"]),
        st.from_type(type(None)) | st.text() | st.integers() | st.booleans(),
    )
)
def test_any_object_parses_or_is_refused_cleanly(raw: dict[str, object]) -> None:
    with contextlib.suppress(ChatError):
        parse_client_frame(json.dumps(raw))


def test_frames_are_compact_utf8_json() -> None:
    data = encode(done_frame(1, "full", False, 3, 4))
    assert json.loads(data) == {
        "type": "done",
        "turn": 1,
        "memoryMode": "full",
        "truncated": False,
        "usage": {"inputTokens": 3, "outputTokens": 4},
    }
    assert len(data) < MAX_FRAME_BYTES


def test_a_rate_limited_error_says_which_limit_and_when_to_retry() -> None:
    from chatmemory.errors import RateLimited
    from chatmemory.protocol import error_frame

    frame = error_frame(RateLimited("messages", 42), "req-1")
    assert frame == {
        "type": "error",
        "code": "rate_limited",
        "message": "You have used up messages for now. Try again in 42 seconds.",
        "requestId": "req-1",
        "limit": "messages",
        "retryAfterSeconds": 42,
    }
    assert error_frame(RateLimited("tokens", 0), None)["retryAfterSeconds"] == 1  # never "now"
    assert "3 hours" in RateLimited("tokens", 3 * 3600 + 5).message
