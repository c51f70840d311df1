"""The evaluation harness end to end, on a short conversation."""

from __future__ import annotations

import json
from pathlib import Path

from chatmemory.config import Settings

from evaluation.report import write
from evaluation.runner import Request, recall, run_strategy, stable_prefix


def test_the_harness_writes_figures_for_each_strategy(tmp_path: Path) -> None:
    settings = Settings(
        memory={"history_turns": 4, "block_turns": 4},
        llm={"offline_delay_seconds": 0},
        embeddings={"provider": "wordllama"},  # the strategies are measured here, not the model
    )
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


def test_the_estimators_error_is_measured_against_the_models_counts(tmp_path: Path) -> None:
    from chatmemory.llm.anthropic_model import build_chat_model
    from chatmemory.llm.offline import request_tokens

    from evaluation import tokens

    settings = Settings(
        memory={"history_turns": 4, "block_turns": 4},
        llm={"offline_delay_seconds": 0},
        embeddings={"provider": "wordllama"},  # the strategies are measured here, not the model
    )
    runs = [run_strategy("hybrid", 30, settings)]
    counter = build_chat_model(settings.llm, None)
    prompt = runs[0].requests[5].prompt
    assert prompt is not None
    # count_tokens through the SDK: the offline model counts as its usage does, overheads included
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt.messages]
    assert counter.count_tokens(prompt) == request_tokens(prompt.system, messages)

    figures = tokens.measure(runs, counter, settings.memory.chars_per_token, "the offline model")
    cold = figures["uncalibrated_whole_request"]
    assert cold["requests"] == 3
    # chars / 3.5 against a count with per-message overheads and code and non-ASCII text in the
    # replies: a few percent low, within the calibration's bounds
    assert -20 < cold["mean_error_percent"] < 0 and cold["max_abs_error_percent"] < 30
    per_turn = figures["per_turn_calibrated"]["hybrid"]
    assert per_turn["turns_1_10"]["requests"] == 10 and per_turn["turns_11_on"]["requests"] == 20
    # calibration from the replies brings the later turns closer than the first ones
    assert (
        per_turn["turns_11_on"]["mean_abs_error_percent"] < per_turn["turns_1_10"]["mean_abs_error_percent"]
    )
    assert 0.5 < per_turn["estimator_scale_at_end"] < 2.0  # not pinned at a bound

    text = write(runs, tmp_path, figures)
    assert "## Token estimator error" in text
    assert json.loads((tmp_path / "tokens.json").read_text()) == figures
