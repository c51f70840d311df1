"""The evaluation harness end to end, on a short conversation."""

from __future__ import annotations

import json
from pathlib import Path

from chatmemory.config import Settings

from evaluation.report import write
from evaluation.runner import Request, recall, run_strategy, stable_prefix


def test_the_harness_writes_figures_for_each_strategy(tmp_path: Path) -> None:
    settings = Settings(memory={"history_turns": 4, "block_turns": 4}, llm={"offline_delay_seconds": 0})
    runs = [run_strategy(name, 50, settings) for name in ("window", "hybrid")]
    table = write(runs, tmp_path)

    figures = json.loads((tmp_path / "memory.json").read_text())
    assert set(figures) == {"window", "hybrid"}
    assert set(figures["hybrid"]["50"]) == {"recall", "input_tokens", "stable_prefix_ratio"}
    assert figures["hybrid"]["50"]["recall"] == 1.0 > figures["window"]["50"]["recall"]
    assert all(r.prompt_tokens <= settings.memory.budget_tokens for run in runs for r in run.requests)
    assert "| hybrid | 50 |" in table
    assert {p.name for p in tmp_path.glob("*.png")} == {"input_tokens.png", "recall.png", "stable_prefix.png"}


def test_recall_and_stable_prefix() -> None:
    request = Request(
        turn=40, context="Ada Lovelace likes green tea", serialized="", prompt_tokens=0, cache_read_tokens=0
    )
    assert recall(request) == 1.0  # the two facts planted before turn 40
    assert stable_prefix("abcdef", "abcxyz") == 0.5
    assert stable_prefix("", "abc") == 0.0
