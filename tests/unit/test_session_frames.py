"""The session routes' client frames; session, turn and export frames sized by bytes, under 32 KB."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chatmemory.errors import BadRequest, UnknownAction
from chatmemory.protocol import (
    FRAME_BUDGET_BYTES,
    KNOWN_ACTIONS,
    MAX_FRAME_BYTES,
    DeleteMyData,
    DeleteSession,
    ExportSession,
    GetSession,
    HistoryTurn,
    NewSession,
    deleted_all_frame,
    deleted_frame,
    encode,
    export_frames,
    parse_client_frame,
    session_frame,
    turn_frames,
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
    assert all(len(encode(f)) <= FRAME_BUDGET_BYTES < MAX_FRAME_BYTES for f in frames)
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


# ---- session and turn frames sized by bytes ---------------------------------------------------

texts = st.text(st.characters(codec="utf-8"), max_size=20_000) | st.sampled_from(
    ["", "a" * 40_000, "漢" * 16_000, "🦀" * 16_000, '"\\\n' * 12_000, "\x01" * 6_000]
)
turns = st.lists(st.tuples(texts, texts | st.none()), max_size=12)


def history(pairs: list[tuple[str, str | None]]) -> list[HistoryTurn]:
    return [HistoryTurn(turn=i, user=u, assistant=a, at=1_763_890_000) for i, (u, a) in enumerate(pairs, 1)]


@settings(max_examples=60, deadline=None)
@given(turns, st.booleans())
def test_a_session_frame_holds_the_newest_turns_that_fit_and_says_what_it_left_out(
    pairs: list[tuple[str, str | None]], older: bool
) -> None:
    given_turns = history(pairs)
    frame = session_frame(SESSION_ID, True, given_turns, "full", guest_token="t" * 300, has_more=older)
    assert len(encode(frame)) <= FRAME_BUDGET_BYTES
    shown = frame["history"]
    # The newest turns, in order, with nothing skipped between them.
    assert [e["turn"] for e in shown] == [t.turn for t in given_turns[len(given_turns) - len(shown) :]]
    assert bool(shown) == bool(given_turns)  # at least the newest one, cut short if it must be
    assert frame["hasMore"] == (len(shown) < len(given_turns) or older)
    for entry, turn in zip(shown, given_turns[len(given_turns) - len(shown) :], strict=True):
        if entry.get("truncated"):
            assert entry is shown[-1] and len(shown) == 1
            assert turn.user.startswith(entry["user"])
            assert (entry["assistant"] is None) == (turn.assistant is None)
            assert turn.assistant is None or turn.assistant.startswith(entry["assistant"])
            # Exactly the fields cut short are named.
            full = {"user": turn.user, "assistant": turn.assistant}
            assert entry["truncated"] == [name for name in ("user", "assistant") if entry[name] != full[name]]
        else:
            assert (entry["user"], entry["assistant"]) == (turn.user, turn.assistant)


def test_a_turn_larger_than_a_frame_shows_the_beginning_of_both_texts() -> None:
    (turn,) = history([("u" * 50_000, "a" * 50_000)])
    (entry,) = session_frame(SESSION_ID, True, [turn], "full")["history"]
    assert entry["truncated"] == ["user", "assistant"]
    assert len(entry["user"]) > 10_000 and len(entry["assistant"]) > 10_000
    (short_reply,) = history([("u" * 50_000, "a short reply")])
    (entry,) = session_frame(SESSION_ID, True, [short_reply], "full")["history"]
    assert entry["truncated"] == ["user"] and entry["assistant"] == "a short reply"
    assert len(encode(entry)) > FRAME_BUDGET_BYTES - 500  # the message takes the room left


@settings(max_examples=60, deadline=None)
@given(texts, texts | st.none())
def test_turn_frames_carry_the_whole_text_in_parts_that_fit(user: str, assistant: str | None) -> None:
    (turn,) = history([(user, assistant)])
    frames = turn_frames(SESSION_ID, turn)
    assert all(len(encode(f)) <= FRAME_BUDGET_BYTES for f in frames)
    assert [f["part"] for f in frames] == list(range(1, len(frames) + 1))
    assert {f["parts"] for f in frames} == {len(frames)}
    assert all(f["type"] == "turn" and f["turn"] == 1 and f["sessionId"] == SESSION_ID for f in frames)
    assert "".join(f["user"] for f in frames) == user
    if assistant is None:
        assert all(f["assistant"] is None for f in frames)
    else:
        assert "".join(f["assistant"] for f in frames) == assistant


def test_get_session_asks_for_a_page_or_a_turn_not_both() -> None:
    assert parse_client_frame('{"action": "getSession", "turn": 3}') == GetSession(
        action="getSession", turn=3
    )
    for body in ('{"action": "getSession", "turn": 0}', '{"action": "getSession", "turn": 2, "before": 3}'):
        with pytest.raises(BadRequest):
            parse_client_frame(body)
