"""The local stack (``python -m local``) as a real process, shared by the end-to-end tests.

Contract used by other e2e tests: the ``stack`` fixture yields an object with ``.port``,
``.http_url`` (ending in ``/``), ``.ws_url`` (ending in ``/ws``), ``.faults(dynamodb=...)`` and
``.dynamodb_url`` (the moto server itself, bypassing the fault proxy).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
E2E_REDIS_URL = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/14")
READY = re.compile(r"WebSocket: ws://127\.0\.0\.1:(\d+)/ws")
MOTO = re.compile(r"DynamoDB:  moto on (http://\S+)")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0

# Fast everything: tiny model pauses, a breaker that retries after 1 s, DynamoDB timeouts that
# make a stalled table fail a call in well under a second.
STACK_ENV = {
    "REDIS_URL": E2E_REDIS_URL,
    "LLM__OFFLINE_DELAY_SECONDS": "0.005",
    # The static embedding model: a tenth of E5's CPU per turn; ranking quality is the eval's.
    "EMBEDDINGS__PROVIDER": "wordllama",
    "EMBEDDINGS__DIMENSIONS": "256",  # wordllama's, and so the vector index's
    "LLM__OFFLINE_MODE": "realistic",  # replies as long and as shaped as Claude's
    "BREAKER__RESET_TIMEOUT_SECONDS": "1",
    "BREAKER__FAIL_MAX": "3",
    "STORAGE__CONNECT_TIMEOUT_SECONDS": "0.2",
    "STORAGE__READ_TIMEOUT_SECONDS": "0.3",
    "STORAGE__MAX_ATTEMPTS": "1",
    "OUTBOX__CONNECT_TIMEOUT_SECONDS": "0.2",
    "OUTBOX__READ_TIMEOUT_SECONDS": "0.3",
    "OUTBOX__MAX_ATTEMPTS": "1",
    "STREAM__FLUSH_INTERVAL_SECONDS": "0.02",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",
    # One loopback source makes every test's guests, and tests send fast: quotas out of the way,
    # except in the stack test_stack_abuse.py starts with its own.
    "QUOTA__MESSAGES_PER_WINDOW": "1000000",
    "QUOTA__TOKENS_PER_DAY": "1000000000",
    "QUOTA__GUESTS_PER_SOURCE_BURST": "1000000",
    "QUOTA__GUESTS_PER_SOURCE_PER_HOUR": "1000000",
}
# Never reach the real Claude or a real table from the tests.
UNSET = ("ANTHROPIC_API_KEY", "LLM__PROVIDER", "DYNAMODB_ENDPOINT_URL", "SESSIONS_TABLE", "CONNECTIONS_TABLE")


@dataclass
class Stack:
    port: int
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def faults(self, **modes: str) -> dict[str, str]:
        """Switch fault modes, e.g. ``stack.faults(dynamodb="stall")``; returns all modes."""
        method = "POST" if modes else "GET"
        data = json.dumps(modes).encode() if modes else None
        request = urllib.request.Request(f"{self.http_url}_local/faults", data=data, method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            return dict(json.loads(response.read()))

    def log(self) -> str:
        return "".join(self.output)

    def caught_up(self) -> list[str]:
        """``output`` once it holds every line the stack wrote before this call. The lines are
        read from its pipe by another thread, so a line written a moment ago may not be there
        yet: a no-op fault switch makes the stack print a line of its own, after those, and
        when that one has been read, so have they."""
        since = len(self.output)
        request = urllib.request.Request(f"{self.http_url}_local/faults", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
        wait_until(
            lambda: any(line.startswith("Faults:    {}") for line in self.output[since:]),
            "the stack's own line after the fault switch",
            interval=0.01,
        )
        return self.output

    @property
    def dynamodb_url(self) -> str:
        """The stack's own DynamoDB (moto), not behind the fault proxy: what is really stored."""
        match = MOTO.search(self.log())
        assert match, "the stack did not say where its DynamoDB is:\n" + self.log()
        return match.group(1)


def _drain(
    process: subprocess.Popen[str], output: list[str], ready: threading.Event, found: list[int]
) -> None:
    # Keep reading so the handlers' logging never blocks on a full pipe.
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)
        match = READY.search(line)
        if match and not found:
            found.append(int(match.group(1)))
            ready.set()
    ready.set()


def start_stack(extra_args: list[str] | None = None, extra_env: dict[str, str] | None = None) -> Stack:
    client = redis.Redis.from_url(E2E_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"the e2e tests need a real Redis at {E2E_REDIS_URL} (see README)")
    client.flushdb()
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(STACK_ENV, **(extra_env or {}))
    process = subprocess.Popen(
        [sys.executable, "-m", "local", "--port", "0", *(extra_args or [])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, stopped as one
    )
    output: list[str] = []
    ready, found = threading.Event(), list[int]()
    reader = threading.Thread(target=_drain, args=(process, output, ready, found), daemon=True)
    reader.start()
    if not ready.wait(START_TIMEOUT) or not found:
        stop_stack(process, check=False)
        pytest.fail("python -m local did not start:\n" + "".join(output))
    return Stack(found[0], process, output, reader)


def stop_stack(process: subprocess.Popen[str], *, check: bool = True) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        code = process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        code = process.wait()
        if check:
            pytest.fail(f"python -m local did not stop within {STOP_TIMEOUT:.0f} s of SIGTERM")
    return code


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    started = start_stack()
    yield started
    code = stop_stack(started.process)
    if started.reader is not None:
        started.reader.join(timeout=5)  # the last lines of output
    assert code == 0, f"python -m local exited with {code}:\n{started.log()[-4000:]}"
    assert "Stopped." in started.log(), started.log()[-4000:]
