"""The local stack's stdout writes whole lines: two threads printing at once (a handler's
metrics and another's log line) never glue one line into another."""

from __future__ import annotations

import io
import threading

from local.output import WholeLines


def test_lines_printed_by_two_threads_at_once_stay_whole() -> None:
    sink = io.StringIO()
    out = WholeLines(sink)
    half_written = threading.Event()
    done = threading.Event()

    def metrics() -> None:  # print's two writes, with the other thread's line between them
        out.write('{"_aws": {}}')
        half_written.set()
        done.wait(timeout=30)
        out.write("\n")

    thread = threading.Thread(target=metrics)
    thread.start()
    assert half_written.wait(timeout=30)
    print("Faults:    {}", file=out)
    done.set()
    thread.join(timeout=30)

    assert sink.getvalue().splitlines() == ["Faults:    {}", '{"_aws": {}}']
