"""``python -m evaluation --locomo PATH [--conversations N] [--limit N] [--budgets 8000,4000]``

Replays LoCoMo conversations (the benchmark's JSON, downloaded separately: CC BY-NC, never part
of this repository) through ``Conversation`` on moto and a real Redis, asks their questions of
categories 1-4 without storing them, and writes ``locomo.md``, ``locomo.json`` and
``locomo.png`` to ``--out``. The path may also come from ``LOCOMO_PATH``; the Redis URL from
``--redis-url`` or ``EVAL_REDIS_URL``. The replies are the recorded ones (a scripted model);
memory tasks (summary, facts) go to the configured model: the offline one, or Claude when
``ANTHROPIC_API_KEY`` is set.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "ChatMemoryEval")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
for _name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
    os.environ.setdefault(_name, "eval")  # moto's DynamoDB needs some credentials

from chatmemory.config import Settings  # noqa: E402
from chatmemory.memory.strategies import STRATEGIES  # noqa: E402

from evaluation import locomo, locomo_report, replay  # noqa: E402


def model_statement(settings: Settings) -> str:
    if settings.llm.provider == "offline":
        tasks = "the offline model (deterministic, extractive)"
    else:
        model = settings.llm.model if settings.llm.provider == "anthropic" else settings.llm.bedrock_model
        tasks = f"{settings.llm.provider} {model}"
    return (
        "Replies: LoCoMo's recorded ones (a scripted model, no generation); memory tasks "
        f"(summary, facts): {tasks}."
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--locomo", default=os.environ.get("LOCOMO_PATH") or None, help="LoCoMo JSON file")
    parser.add_argument("--conversations", type=int, default=None, help="the first N conversations")
    parser.add_argument("--limit", type=int, default=None, help="at most N questions per conversation")
    parser.add_argument(
        "--turns", type=int, default=None, help="the first N turns of each conversation (and its questions)"
    )
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="default: all registered")
    parser.add_argument("--budgets", default="8000,4000")
    parser.add_argument("--redis-url", default=os.environ.get("EVAL_REDIS_URL") or None)
    parser.add_argument("--out", type=Path, default=Path("docs/eval"))
    parser.add_argument(
        "--details", type=Path, default=None, help="also write each question's outcome here (JSON lines)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.locomo:
        print(
            "No LoCoMo file: pass --locomo PATH or set LOCOMO_PATH (make eval LOCOMO=PATH). The "
            "benchmark is downloaded separately (data/locomo10.json of the authors' repository, "
            "snap-research/LoCoMo, CC BY-NC 4.0); see README.",
            file=sys.stderr,
        )
        return 2
    if not args.redis_url:
        print("No Redis: pass --redis-url or set EVAL_REDIS_URL (make eval sets it).", file=sys.stderr)
        return 2
    for noisy in ("bm25s", "httpx2", "botocore", "wordllama"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    unknown = [s for s in args.strategies.split(",") if s not in STRATEGIES]
    if unknown:
        print(f"unknown strategies {unknown}; registered: {list(STRATEGIES)}", file=sys.stderr)
        return 2
    samples = [
        locomo.truncated(s, args.turns, args.limit)
        for s in locomo.load(Path(args.locomo), args.conversations)
    ]
    settings = Settings()
    budgets = [int(b) for b in args.budgets.split(",")]
    judging = None
    if settings.llm.provider != "offline":  # the offline model cannot answer or judge
        from chatmemory.llm.anthropic_model import build_chat_model

        from evaluation.judge import Judge

        judging = replay.Judging(Judge(build_chat_model(settings.llm, settings.llm.api_key)))
    began = time.monotonic()
    results = replay.run(
        samples,
        settings,
        args.redis_url,
        budgets,
        args.strategies.split(","),
        log=lambda line: print(line, file=sys.stderr),
        judging=judging,
    )
    command = ["python -m evaluation --locomo $LOCOMO"]
    for flag in ("conversations", "limit", "turns"):
        if getattr(args, flag) is not None:
            command.append(f"--{flag} {getattr(args, flag)}")
    if args.strategies != ",".join(STRATEGIES):
        command.append(f"--strategies {args.strategies}")
    command.append(f"--budgets {args.budgets}")
    meta = {
        "command": " ".join(command),
        "model": model_statement(settings),
        "judge": (
            f"{model_statement(settings).split(': ')[-1].rstrip('.')} answered the questions of "
            f"{', '.join(sorted(judging.methods))} at {budgets[0]:,} tokens and graded them"
            if judging is not None
            else "not measured: no real model configured (ANTHROPIC_API_KEY or LLM__PROVIDER=bedrock); "
            "the offline model cannot answer or judge"
        ),
        "samples": results.samples,
        "turns": sum(len(s.turns) for s in samples),
        "questions": sum(o.method == "recency" and o.budget == budgets[0] for o in results.outcomes),
        "skipped_questions": results.skipped_questions,
        "unmapped_evidence": results.unmapped_evidence,
        "budgets": budgets,
        "runtime_seconds": round(time.monotonic() - began, 1),
    }
    print(locomo_report.write(results, args.out, meta))
    if args.details:
        locomo_report.details(results, args.details)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
