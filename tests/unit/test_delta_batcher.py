"""Deltas are batched by size and time, and no frame exceeds API Gateway's 32 KB."""

from __future__ import annotations

from typing import Any

from chatmemory.protocol import MAX_FRAME_BYTES, encode
from chatmemory.sender import DeltaBatcher


class Recorder:
    """Stands in for API Gateway's @connections endpoint."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        self.frames.append(frame)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def batcher(recorder: Recorder, clock: Clock, flush_chars: int = 100, interval: float = 0.1) -> DeltaBatcher:
    return DeltaBatcher(recorder, "c", 7, flush_chars, interval, clock)


def test_small_chunks_are_batched_until_enough_text() -> None:
    recorder, clock = Recorder(), Clock()
    b = batcher(recorder, clock, flush_chars=10)
    for piece in ["ab", "cd", "ef", "gh"]:
        b.add(piece)
    assert recorder.frames == []
    b.add("ij")
    assert recorder.frames == [{"type": "delta", "turn": 7, "text": "abcdefghij"}]


def test_slow_chunks_go_out_when_the_interval_passes() -> None:
    recorder, clock = Recorder(), Clock()
    b = batcher(recorder, clock, flush_chars=1000, interval=0.1)
    b.add("slow ")
    clock.now = 0.2
    b.add("model")
    assert [f["text"] for f in recorder.frames] == ["slow model"]


def test_flush_sends_the_rest_and_nothing_when_empty() -> None:
    recorder, clock = Recorder(), Clock()
    b = batcher(recorder, clock)
    b.flush()
    b.add("tail")
    b.flush()
    assert [f["text"] for f in recorder.frames] == ["tail"]


def test_huge_text_is_split_into_frames_under_32_kb_without_loss() -> None:
    recorder, clock = Recorder(), Clock()
    b = batcher(recorder, clock, flush_chars=10**9, interval=10**9)
    text = ("\u0000\u00e9\u4e2d\U0001f600" * 30_000) + "end"
    b.add(text)
    b.flush()
    assert "".join(f["text"] for f in recorder.frames) == text
    assert all(len(encode(f)) <= MAX_FRAME_BYTES for f in recorder.frames)
    assert len(recorder.frames) > 1
