"""The local stack's output, one whole line at a time.

Every handler runs on a thread of this one process and prints to the same stdout (Powertools'
metrics are ``print``-ed); ``print`` writes the text and its newline in two calls, so two threads
printing at once can glue one line onto the middle of another. CloudWatch gets each
invocation's lines apart; so does whoever reads this output (the e2e tests, a developer)."""

from __future__ import annotations

import io
import sys
import threading
from typing import TextIO


class WholeLines(io.TextIOBase):
    """A text stream that holds each thread's text until its newline, then writes the line in
    one call under a lock."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._pending = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        pending = getattr(self._pending, "text", "") + text
        complete, newline, rest = pending.rpartition("\n")
        self._pending.text = rest
        if newline:
            with self._lock:
                self._stream.write(complete + newline)
                self._stream.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding


def whole_lines() -> None:
    """Make this process's stdout write whole lines (idempotent)."""
    if not isinstance(sys.stdout, WholeLines):
        sys.stdout = WholeLines(sys.stdout)
