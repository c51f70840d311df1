"""The session routes' client frames, and export documents split over frames under 32 KB."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chatmemory.errors import BadRequest, UnknownAction
from chatmemory.protocol import (
    KNOWN_ACTIONS,
    MAX_FRAME_BYTES,
    DeleteMyData,
    DeleteSession,
    ExportSession,
    GetSession,
    NewSession,
    deleted_all_frame,
    deleted_frame,
    encode,
    export_frames,
    parse_client_frame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

SESSION_ID = "9f0c6a52-3f55-4c1e-9d2b-7a9b0c1d2e3f"


def test_the_session_actions_parse() -> None:
    assert isinstance(parse_client_frame('{"action": "newSession"}'), NewSession)
    assert isinstance(parse_client_frame('{"action": "deleteSession"}'), DeleteSession)
    assert isinstance(parse_client_frame('{"action": "exportSession"}'), ExportSession)
    assert parse_client_frame('{"action": "getSession", "before": 7}') == GetSession(
        action="getSession", before=7
    )
    assert isinstance(parse_client_frame('{"action": "deleteMyData"}'), DeleteMyData)
    assert {"newSession", "deleteSession", "exportSession", "deleteMyData"} <= KNOWN_ACTIONS


@pytest.mark.parametrize(
    "body",
    [
        '{"action": "getSession", "before": 0}',
        '{"action": "getSession", "before": -1}',
        '{"action": "getSession", "before": "3"}',
        '{"action": "getSession", "before": 2.5}',
        '{"action": "getSession", "before": true}',
        '{"action": "deleteSession", "sessionId": "someone-elses"}',
        '{"action": "exportSession", "format": "csv"}',
        '{"action": "newSession", "sessionId": "mine"}',
        '{"action": "deleteMyData", "principal": "user:someone-else"}',
        '{"action": "sendMessage", "message": "bell \\u0007"}',
        '{"action": "sendMessage", "message": "half \\ud83d"}',
        '{"action": "sendMessage", "message": "hi", "clientMessageId": "caf\\u00e9"}',
    ],
)
def test_refusals(body: str) -> None:
    with pytest.raises(BadRequest):
        parse_client_frame(body)


def test_deleted_frames() -> None:
    assert deleted_frame(SESSION_ID) == {"type": "deleted", "sessionId": SESSION_ID}
    assert deleted_all_frame(SESSION_ID, sessions=3, items=42) == {
        "type": "deleted",
        "sessionId": SESSION_ID,
        "scope": "principal",
        "sessions": 3,
        "items": 42,
    }


def test_text_a_client_sent_is_echoed_in_an_error_only_when_printable_ascii() -> None:
    with pytest.raises(UnknownAction) as shown:
        parse_client_frame('{"action": "dance"}')
    assert '"dance"' in shown.value.message
    for hostile in ("\\u0007bell", "\\udc80", "x" * 41):
        with pytest.raises(UnknownAction) as hidden:
            parse_client_frame(json.dumps({"action": json.loads(f'"{hostile}"')}))
        assert "(not shown)" in hidden.value.message
        encode({"message": hidden.value.message})  # always encodable


def reassembled(frames: list[dict[str, Any]]) -> Any:
    assert [f["part"] for f in frames] == list(range(1, len(frames) + 1))
    assert {f["parts"] for f in frames} == {len(frames)}
    assert all(f["type"] == "export" and f["sessionId"] == SESSION_ID for f in frames)
    assert all(len(encode(f)) <= MAX_FRAME_BYTES for f in frames)
    return json.loads("".join(f["data"] for f in frames))


def test_a_small_document_is_one_frame() -> None:
    frames = export_frames(SESSION_ID, {"turns": []})
    assert len(frames) == 1 and reassembled(frames) == {"turns": []}


@pytest.mark.parametrize("char", ["a", "\x01", '"', "é", "漢", "🦀"])
def test_a_large_document_of_any_characters_splits_into_frames_that_fit(char: str) -> None:
    document = {"turns": [{"user": char * 20_000} for _ in range(10)]}
    frames = export_frames(SESSION_ID, document)
    assert len(frames) > 1
    assert reassembled(frames) == document


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(max_size=5_000), max_size=30))
def test_any_document_reassembles(texts: list[str]) -> None:
    document = {"turns": texts}
    assert reassembled(export_frames(SESSION_ID, document)) == document
