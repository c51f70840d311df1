"""``python -m evaluation.smoke [--turns 200] [--strategies hybrid,window] [--out docs/eval/smoke]``

A smoke test of the strategies, not a measure of memory: synthetic conversations whose planted
facts are phrased the way the offline model's summary and facts extract them, so its recall
says the pipeline runs, not that memory works (``python -m evaluation`` measures that, on
LoCoMo). Its other figures (input tokens, stable prefix, the estimator's error) stand.

Offline by default (the offline model through the SDK); against Claude when the environment
configures it (``ANTHROPIC_API_KEY``, or ``LLM__PROVIDER=bedrock``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import get_args

os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "ChatMemoryEval")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
for _name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
    os.environ.setdefault(_name, "eval")  # moto's DynamoDB needs some credentials

from chatmemory.config import Settings, StrategyName  # noqa: E402
from chatmemory.llm.anthropic_model import build_chat_model  # noqa: E402

from evaluation import tokens  # noqa: E402
from evaluation.report import write  # noqa: E402
from evaluation.runner import run_strategy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.smoke", description=__doc__)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--strategies", default=",".join(get_args(StrategyName)))
    parser.add_argument("--out", type=Path, default=Path("docs/eval/smoke"))
    args = parser.parse_args(argv)
    settings = Settings()
    settings.llm.offline_delay_seconds = 0
    names: list[StrategyName] = [s for s in get_args(StrategyName) if s in args.strategies.split(",")]
    runs = []
    for name in names:
        started = time.monotonic()
        runs.append(run_strategy(name, args.turns, settings))
        print(f"{name}: {args.turns} turns in {time.monotonic() - started:.1f}s", file=sys.stderr)
    counter = build_chat_model(settings.llm, settings.llm.api_key)
    counted_by = (
        "the offline model's counts (ceil(chars / 4)), not Claude's"
        if settings.llm.provider == "offline"
        else f"{settings.llm.provider} {settings.llm.model}, messages.count_tokens"
    )
    estimator = tokens.measure(runs, counter, settings.memory.chars_per_token, counted_by)
    print(write(runs, args.out, estimator))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
