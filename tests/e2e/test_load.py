"""``python -m local.load`` in small (20 sessions x 3 turns): the driver starts the local stack,
chats, and proves from DynamoDB that every acknowledged turn is stored exactly once, in order.
The full 500 x 20 run is ``make load`` (docs/load.md), outside CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_REDIS_URL
from tests.e2e.conftest import ROOT, UNSET

SESSIONS, TURNS = 20, 3


# 60 turns of realistic replies: about a minute on a busy 2-core machine, at times several.
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_load_driver_chats_and_finds_every_turn_stored_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    # Not the e2e stacks' database (theirs is flushed when one starts): the unit and integration
    # tests', unused meanwhile. The suite uses the two databases it is given and no other.
    env["REDIS_URL"] = TEST_REDIS_URL
    out = tmp_path / "load"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "local.load",
            "--sessions",
            str(SESSIONS),
            "--turns",
            str(TURNS),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["turns_answered"] == data["turns_acknowledged"] == SESSIONS * TURNS
    assert data["verification"] == {
        "acknowledged": SESSIONS * TURNS,
        "stored": SESSIONS * TURNS,
        "lost": 0,
        "duplicated": 0,
        "out_of_order_sessions": 0,
    }
    assert data["first_delta"]["p50_ms"] is not None and data["done"]["p99_ms"] is not None
    assert "| 60 | 60 | **0** | **0** | 0 |" in out.with_suffix(".md").read_text()
