"""Figures from the runs: ``memory.json``, a markdown table and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any

from evaluation import tokens
from evaluation.runner import Run, recall, stable_prefix

CHECKPOINTS = (50, 100, 200)


def per_request(run: Run) -> list[dict[str, float]]:
    rows, previous = [], ""
    for request in run.requests:
        rows.append(
            {
                "turn": request.turn,
                "recall": recall(request),
                "input_tokens": request.prompt_tokens,
                "stable_prefix": stable_prefix(previous, request.serialized) if previous else 0.0,
                "cache_read": request.cache_read_tokens / max(1, request.prompt_tokens),
                "truncated": float(request.truncated),
            }
        )
        previous = request.serialized
    return rows


def figures(runs: list[Run]) -> tuple[dict[str, Any], dict[str, list[dict[str, float]]]]:
    """``{strategy: {turn: {recall, input_tokens, stable_prefix_ratio}}}`` and the raw series.
    ``stable_prefix_ratio`` at turn t is the mean over requests 2..t (cost follows the mean)."""
    table: dict[str, Any] = {}
    series: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        rows = series[run.strategy] = per_request(run)
        table[run.strategy] = {
            str(t): {
                "recall": round(rows[t - 1]["recall"], 3),
                "input_tokens": int(rows[t - 1]["input_tokens"]),
                "stable_prefix_ratio": round(mean(r["stable_prefix"] for r in rows[1:t]), 3),
            }
            for t in CHECKPOINTS
            if t <= len(rows)
        }
    return table, series


def markdown(table: dict[str, Any], series: dict[str, list[dict[str, float]]], budget: int) -> str:
    lines = [
        "| strategy | turn | recall | input tokens | stable prefix | max input tokens (all turns) "
        "| cache-read share | truncated turns |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for strategy, by_turn in table.items():
        rows = series[strategy]
        peak = int(max(r["input_tokens"] for r in rows))
        read = sum(r["cache_read"] * r["input_tokens"] for r in rows) / sum(r["input_tokens"] for r in rows)
        truncated = int(sum(r["truncated"] for r in rows))
        for turn, f in by_turn.items():
            lines.append(
                f"| {strategy} | {turn} | {f['recall']:.2f} | {f['input_tokens']:,} | "
                f"{f['stable_prefix_ratio']:.2f} | {peak:,} / {budget:,} | {read:.2f} | {truncated} |"
            )
    return "\n".join(lines) + "\n"


def plots(series: dict[str, list[dict[str, float]]], budget: int, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for key, title, limit in (
        ("input_tokens", "Input tokens per request", budget),
        ("recall", "Planted facts in the context (recall)", None),
        ("stable_prefix", "Share of the prompt unchanged since the previous turn", None),
    ):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for strategy, rows in series.items():
            ax.plot([r["turn"] for r in rows], [r[key] for r in rows], label=strategy, linewidth=1.2)
        if limit:
            ax.axhline(limit, color="grey", linestyle="--", linewidth=1, label="budget")
        ax.set_title(title)
        ax.set_xlabel("turn")
        ax.legend()
        fig.tight_layout()
        path = out / f"{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def write(runs: list[Run], out: Path, estimator: dict[str, Any] | None = None) -> str:
    """memory.json, memory.md and the plots; with ``estimator`` (``evaluation.tokens.measure``)
    also tokens.json and its section in memory.md."""
    out.mkdir(parents=True, exist_ok=True)
    budget = runs[0].budget
    table, series = figures(runs)
    (out / "memory.json").write_text(json.dumps(table, indent=2) + "\n")
    text = markdown(table, series, budget)
    if estimator is not None:
        (out / "tokens.json").write_text(json.dumps(estimator, indent=2) + "\n")
        text += "\n" + tokens.markdown(estimator)
    (out / "memory.md").write_text(
        "# Memory strategies, smoke test\n\nWritten by `python -m evaluation.smoke`. Planted facts phrased "
        "for the offline model: a check that the pipeline runs, not a measure of memory "
        "(see `../locomo.md`).\n\n" + text
    )
    plots(series, budget, out)
    return text
