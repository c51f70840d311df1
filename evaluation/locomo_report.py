"""The LoCoMo figures: ``locomo.json``, ``locomo.md`` and ``locomo.png`` in the output folder."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from statistics import mean
from typing import Any

from evaluation.locomo import CATEGORIES
from evaluation.replay import BASELINES, Outcome, Results

BASELINE_LABELS = {
    "recency": "baseline: the last turns that fit",
    "bm25": "baseline: BM25, best first",
    "dense": "baseline: dense (WordLlama 256-d), best first",
    "fused": "baseline: BM25 + dense, reciprocal rank",
}


def _stats(outcomes: list[Outcome]) -> dict[str, Any]:
    graded = [o.correct for o in outcomes if o.correct is not None]
    return {
        "judged": len(graded),
        "answer_accuracy": round(mean(graded), 4) if graded else None,
        "questions": len(outcomes),
        "evidence_recall": round(mean(o.recall for o in outcomes), 4),
        "all_evidence_present": round(mean(o.complete for o in outcomes), 4),
        "prompt_tokens_mean": round(mean(o.prompt_tokens for o in outcomes)),
        "prompt_tokens_max": max(o.prompt_tokens for o in outcomes),
        "over_budget": sum(o.prompt_tokens > o.budget for o in outcomes),
        "plan_ms_mean": round(mean(o.plan_ms for o in outcomes), 3),
    }


def figures(results: Results, meta: dict[str, Any]) -> dict[str, Any]:
    """``{"meta", "timings", "budgets": {budget: {method: {"all" | category: stats}}}}``."""
    grouped: dict[int, dict[str, list[Outcome]]] = defaultdict(lambda: defaultdict(list))
    for outcome in results.outcomes:
        grouped[outcome.budget][outcome.method].append(outcome)
    budgets: dict[str, Any] = {}
    for budget, methods in grouped.items():
        table: dict[str, Any] = {}
        for method, outcomes in methods.items():
            row = {"all": _stats(outcomes)}
            for category, label in CATEGORIES.items():
                chosen = [o for o in outcomes if o.category == category]
                if chosen:
                    row[f"{category} {label}"] = _stats(chosen)
            table[method] = row
        budgets[str(budget)] = table
    timings = {
        method: {
            "turns": t.turns,
            "replay_ms_per_turn": round(1000 * t.seconds / t.turns, 3) if t.seconds else None,
            "index_ms_per_turn": round(1000 * t.index_seconds / t.turns, 3) if t.index_seconds else None,
        }
        for method, t in results.timings.items()
    }
    quality = {
        strategy: {"summaries": len(scores), "score_mean": round(mean(scores), 3)}
        for strategy, scores in results.summary_quality.items()
    }
    return {"meta": meta, "timings": timings, "budgets": budgets, "summary_quality": quality}


def _label(method: str) -> str:
    return BASELINE_LABELS.get(method, f"`{method}`")


def _ordered(methods: dict[str, Any]) -> list[str]:
    strategies = [m for m in methods if m not in BASELINES]
    return strategies + [m for m in BASELINES if m in methods]


def markdown(figs: dict[str, Any]) -> str:
    meta, timings = figs["meta"], figs["timings"]
    lines = [
        "# Memory on LoCoMo: did the answer's turns reach the prompt?",
        "",
        f"Written by `{meta['command']}` in {meta['runtime_seconds']:.0f} s. {meta['model']}",
        "",
        f"Conversations: {', '.join(meta['samples'])} ({meta['turns']:,} stored turns, "
        f"{meta['questions']:,} questions of categories 1-4 with evidence; "
        f"left out: {meta['skipped_questions']} without a usable evidence id; ignored: "
        f"{meta['unmapped_evidence']} evidence id(s) the conversation does not have). "
        "Evidence recall: the share of a question's evidence turns whose text is in the prompt "
        "(mean over questions); all present: the share of questions with every one there. Prompt "
        "tokens as the offline model counts them (`ceil(chars / 4)`), the same count for every "
        "row. Plan: ms to build the question's prompt (strategies: `Conversation.preview`, the "
        "history read from Redis included; baselines: ranking and filling). Replay: ms per turn "
        "of `send_message` on in-process moto and Redis, memory updates run inline (mostly "
        "moto's own cost). The baselines rank the turns the store holds after the replay, every "
        "one of them, and fill the budget best first; a strategy sees what the domain loads.",
        "",
    ]
    for budget, methods in figs["budgets"].items():
        lines += [
            f"## Budget {int(budget):,} tokens",
            "",
            "| memory | evidence recall | all evidence present | answered correctly (LLM judge) "
            "| prompt tokens (mean) | max | over budget | plan ms / question | replay ms / turn |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for method in _ordered(methods):
            s = methods[method]["all"]
            t = timings.get(method, {})
            replay = f"{t['replay_ms_per_turn']:.1f}" if t.get("replay_ms_per_turn") else "-"
            judged = (
                f"{s['answer_accuracy']:.2f} (n={s['judged']})"
                if s.get("answer_accuracy") is not None
                else "-"
            )
            lines.append(
                f"| {_label(method)} | {s['evidence_recall']:.2f} | {s['all_evidence_present']:.2f} "
                f"| {judged} | {s['prompt_tokens_mean']:,} | {s['prompt_tokens_max']:,} | {s['over_budget']} "
                f"| {s['plan_ms_mean']:.2f} "
                f"| {replay} |"
            )
        categories = [f"{c} {label}" for c, label in CATEGORIES.items()]
        lines += [
            "",
            "By category (evidence recall / all present):",
            "",
            "| memory | " + " | ".join(categories) + " |",
            "| --- | " + " | ".join("---:" for _ in categories) + " |",
        ]
        for method in _ordered(methods):
            cells = []
            for category in categories:
                s = methods[method].get(category)
                cells.append(
                    f"{s['evidence_recall']:.2f} / {s['all_evidence_present']:.2f} (n={s['questions']})"
                    if s
                    else "-"
                )
            lines.append(f"| {_label(method)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"Answers and summaries (LLM judge): {meta.get('judge', 'not measured')}.")
    for strategy, q in figs.get("summary_quality", {}).items():
        lines.append(
            f"- `{strategy}`: summary quality {q['score_mean']:.2f} (0-1, the judge's score of "
            f"{q['summaries']} final summaries against three turns each covers)"
        )
    lines.append("")
    index = {m: t["index_ms_per_turn"] for m, t in timings.items() if t.get("index_ms_per_turn")}
    if index:
        lines.append(
            "Indexing the stored turns (baselines, once per conversation): "
            + ", ".join(f"{m} {v:.2f} ms / turn" for m, v in index.items())
            + "."
        )
        lines.append("")
    return "\n".join(lines)


def plot(figs: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(figs["budgets"])
    fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4.8), sharey=True, squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        methods = figs["budgets"][budget]
        names = _ordered(methods)
        xs = range(len(names))
        recall = [methods[m]["all"]["evidence_recall"] for m in names]
        complete = [methods[m]["all"]["all_evidence_present"] for m in names]
        ax.bar([x - 0.2 for x in xs], recall, width=0.4, label="evidence recall")
        ax.bar([x + 0.2 for x in xs], complete, width=0.4, label="all evidence present")
        ax.set_xticks(list(xs), names, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"LoCoMo, budget {int(budget):,} tokens")
        ax.grid(axis="y", linewidth=0.4)
    axes[0][0].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def details(results: Results, path: Path) -> Path:
    """Every question's outcome, one JSON object a line (ids and counts, no benchmark text: keep
    it outside the repository all the same)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for outcome in results.outcomes:
            out.write(json.dumps(asdict(outcome)) + "\n")
    return path


def write(results: Results, out: Path, meta: dict[str, Any]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(results, meta)
    (out / "locomo.json").write_text(json.dumps(figs, indent=2) + "\n")
    text = markdown(figs)
    (out / "locomo.md").write_text(text)
    plot(figs, out / "locomo.png")
    return text
