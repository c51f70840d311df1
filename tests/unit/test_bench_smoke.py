"""The benchmark runs end to end at the smallest sizes and writes its report (a few seconds).

LangChain and matplotlib are bench-only: without them the peers are reported as unavailable
and no plot is drawn, and the run still has to succeed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_bench_smoke(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--lengths",
            "3",
            "--reps",
            "2",
            "--warmup",
            "1",
            "--cold-runs",
            "0",
            "--no-plots",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["side"], r["operation"], r["length"]): r for r in results["per_turn"]}
    for length in (3,):
        hit = rows[("project", "cache_hit", length)]
        assert hit["samples"] == 2 and hit["median_ms"] > 0
        # DynamoDB: the message, the erased session's tombstone, the reply (and a miss's query)
        assert hit["round_trips"] == {"redis": 2, "dynamodb": 3}
        assert rows[("project", "cache_miss", length)]["round_trips"] == {"redis": 3, "dynamodb": 4}
        assert rows[("project", "stateless", length)]["round_trips"] == {"redis": 0, "dynamodb": 0}
        assert rows[("floor", "cache_hit", length)]["ratio_to_floor"] == 1.0
    assert "| length | side |" in (tmp_path / "results.md").read_text()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_retrieval_bench_smoke(tmp_path: Path) -> None:
    """The whole-turn retrieval benchmark runs, and its retrieval turns really searched."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.retrieval",
            "--lengths",
            "40",
            "--reps",
            "2",
            "--providers",
            "wordllama",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {r["side"]: r for r in json.loads((tmp_path / "retrieval.json").read_text())["rows"]}
    assert set(rows) == {"token_budget", "retrieval (wordllama)", "design reference"}
    assert rows["design reference"]["x_reference"] == 1.0
    assert rows["design reference"]["round_trips"] == {"redis": 2, "dynamodb": 1}
    assert rows["token_budget"]["round_trips"]["dynamodb"] >= 2  # the message, then its reply
    assert rows["token_budget"]["retrieved_turns"] == 0
    assert rows["retrieval (wordllama)"]["median_ms"] > 0
    assert "| turns | side |" in (tmp_path / "retrieval.md").read_text()
