"""``python -m local.client`` as a real process against the real local stack."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SESSION = re.compile(r"^Session (\S+) \((new|resumed)", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_client(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "local.client", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def session_of(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    match = SESSION.search(result.stderr)
    assert match, f"no session line on stderr:\n{result.stderr}"
    return match.group(1), match.group(2)


def test_one_message_then_resume_with_memory(stack: Any) -> None:
    first = run_client(stack.ws_url, "-m", "hello")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()  # the reply
    session_id, how = session_of(first)
    assert how == "new"
    resume = re.search(r"Resume with: (--session \S+ --token \S+)", first.stderr)
    assert resume, first.stderr  # a new guest is told how to come back as the same guest

    second = run_client(stack.ws_url, *resume.group(1).split(), "-m", "do you remember?")
    assert second.returncode == 0, second.stderr
    assert session_of(second) == (session_id, "resumed")
    assert "resumed, 1 earlier turn" in second.stderr
    assert second.stdout.strip()


def test_interactive_reads_lines_until_end_of_input(stack: Any) -> None:
    result = run_client(stack.ws_url, stdin="first line\n\nsecond line\n")
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.splitlines() if line.startswith("bot> ")]
    assert len(replies) == 2, result.stdout
    assert all(len(r) > len("bot> ") for r in replies)
    session_id, _ = session_of(result)
    assert f"--session {session_id}" in result.stderr


def test_error_frame_exits_non_zero(stack: Any) -> None:
    result = run_client(stack.ws_url, "-m", "   ")
    assert result.returncode == 1
    assert "Error: " in result.stderr
    assert "empty" in result.stderr.lower()


def test_connection_failure_exits_non_zero() -> None:
    result = run_client(f"ws://127.0.0.1:{free_port()}/ws", "-m", "hello", "--timeout", "5")
    assert result.returncode == 3
    assert "Could not connect" in result.stderr
    assert result.stdout == ""
