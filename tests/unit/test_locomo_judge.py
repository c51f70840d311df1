"""The LLM judge of the LoCoMo harness: Claude's replies parsed the ways it writes them, and the
grades and summary scores carried into the report. The model here answers only from the prompt
the memory built (it knows nothing else), so a grade depends on what memory put there."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from chatmemory.config import Settings
from chatmemory.llm.base import Prompt, ReplyStream
from chatmemory.turns import Usage

from evaluation import locomo, locomo_report, replay
from evaluation.judge import JUDGE_SYSTEM, SUMMARY_SYSTEM, Judge, parse_label, parse_score
from tests.unit.test_locomo_eval import BagOfWords, dataset  # noqa: F401  (the fixture)

FACTS = {"greyhound": "Pixel", "sister": "Porto"}


def test_labels_are_read_from_prose_fences_and_bare_words() -> None:
    assert parse_label('{"label": "CORRECT"}') is True
    assert parse_label('The answer matches.\n```json\n{"label": "correct"}\n```') is True
    assert parse_label('Looking at it: {"label": "WRONG"} since Porto is not Lisbon.') is False
    assert parse_label("WRONG") is False
    assert parse_label('{"label": "COR') is None  # cut off at max_tokens
    assert parse_label("It is CORRECT in part but WRONG about the date.") is None
    assert parse_score('Assessment:\n```json\n{"score": 0.67, "missing": ["the date"]}\n```') == 0.67
    assert parse_score('{"score": 7}') is None  # not on the 0-1 scale
    assert parse_score("about two thirds") is None


class PromptOnlyModel:
    """Answers a question only from what its prompt holds, grades as Claude does (prose, then a
    fenced verdict), and scores a summary by how many of the sampled turns' key words it keeps."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @contextlib.contextmanager
    def stream(self, prompt: Prompt) -> Iterator[ReplyStream]:
        text = prompt.system + "\n".join(m["content"] for m in prompt.messages)
        self.calls.append(prompt.system)
        if prompt.system == JUDGE_SYSTEM:
            gold = text.split("Gold answer: ")[1].split("\n")[0]
            answer = text.split("Generated answer: ")[1].split("\n")[0]
            label = "CORRECT" if gold.lower() in answer.lower() else "WRONG"
            reply = f'Comparing the two answers.\n```json\n{{"label": "{label}"}}\n```'
        elif prompt.system == SUMMARY_SYSTEM:
            summary = text.split("Summary:\n")[1].split("\n\nTurns of")[0]
            reply = f'Here is my check: {{"score": {0.5 if summary else 0.0}, "missing": []}}'
        else:
            question = prompt.messages[-1]["content"].lower()
            topic = next((t for t in FACTS if t in question), None)
            context = text.lower()
            known = topic is not None and FACTS[topic].lower() in context.replace(question, "")
            reply = f"It is {FACTS[topic]}." if known and topic else "I don't know from our conversation."
        yield ReplyStream(iter([reply]), Usage(input_tokens=len(text) // 4, output_tokens=len(reply) // 4))


def test_the_judge_grades_what_each_memory_put_in_the_prompt(
    dataset: Path,  # noqa: F811
    redis_url: str,
    tmp_path: Path,
) -> None:
    model = PromptOnlyModel()
    judging = replay.Judging(Judge(model), frozenset({"window", "hybrid", "recency", "fused"}))
    settings = Settings(memory={"history_turns": 2, "block_turns": 2}, llm={"offline_delay_seconds": 0})
    results = replay.run(
        locomo.load(dataset),
        settings,
        redis_url,
        budgets=(8_000, 150),
        strategies=["window", "hybrid"],
        embedder=BagOfWords(),
        judging=judging,
    )

    grades = {(o.method, o.budget, o.category): o.correct for o in results.outcomes}
    assert grades[("fused", 8_000, 4)] is True  # the whole conversation fits: Pixel is there
    assert grades[("window", 8_000, 4)] is False  # the last two turns only: it does not know
    assert grades[("bm25", 8_000, 4)] is None  # not a judged method
    assert grades[("fused", 150, 4)] is None  # judged at the first budget only
    # A baseline's prompt holds turns only: its answer is right exactly when the evidence is there
    single = [o for o in results.outcomes if o.method in ("recency", "fused") and o.category == 4]
    assert single and all(o.correct == o.complete for o in single if o.correct is not None)
    assert SUMMARY_SYSTEM in model.calls  # hybrid's summary was checked against its turns

    meta = {"command": "test", "model": "m", "samples": results.samples, "turns": 11, "judge": "stand-in"}
    meta |= {"questions": 2, "skipped_questions": 1, "unmapped_evidence": 1, "runtime_seconds": 0}
    text = locomo_report.write(results, tmp_path, meta)
    figures = json.loads((tmp_path / "locomo.json").read_text())
    assert figures["budgets"]["8000"]["fused"]["all"]["answer_accuracy"] == 1.0
    assert figures["budgets"]["8000"]["window"]["all"]["answer_accuracy"] < 1.0
    assert figures["summary_quality"]["hybrid"]["summaries"] == 1
    assert "answered correctly (LLM judge)" in text and "stand-in" in text
