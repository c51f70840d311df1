"""The LoCoMo harness end to end on a tiny conversation of LoCoMo's shape, written here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chatmemory.config import Settings

from evaluation import baselines, locomo, locomo_report, replay

FILLER = [
    "How was your week?",
    "Busy, lots of work and the kids kept me running around all day.",
    "Did you watch the game on Sunday evening?",
    "No, we were out walking the dog by the river until late.",
]


def conversation() -> dict[str, Any]:
    """Three sessions between Ana and Ben; the questions' answers are in sessions 1 and 2."""

    def session(n: int, lines: list[str], first: str = "Ana") -> list[dict[str, Any]]:
        speakers = [first, "Ben" if first == "Ana" else "Ana"]
        return [
            {"speaker": speakers[i % 2], "dia_id": f"D{n}:{i + 1}", "text": text}
            for i, text in enumerate(lines)
        ]

    first = session(1, ["I adopted a greyhound called Pixel last weekend!", "Congratulations!", *FILLER])
    first[1]["blip_caption"] = "a photo of a cake"
    second = session(2, [*FILLER, "My sister Carla moved to Porto in March.", "Porto is lovely."], "Ben")
    third = session(3, [*FILLER, *FILLER, "See you soon."])  # odd: the last message has no reply
    return {
        "sample_id": "tiny-1",
        "conversation": {
            "speaker_a": "Ana",
            "speaker_b": "Ben",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": first,
            "session_2_date_time": "10:00 am on 2 June, 2023",
            "session_2": second,
            "session_3_date_time": "7:30 pm on 20 July, 2023",
            "session_3": third,
        },
        "qa": [
            {
                "question": "What is the name of Ana's greyhound?",
                "answer": "Pixel",
                "evidence": ["D1:1"],
                "category": 4,
            },
            {
                "question": "Where did Ben's sister Carla move?",
                "answer": "Porto",
                "evidence": ["D2:5; D2:6"],  # the dataset's own malformed shape
                "category": 1,
            },
            {"question": "What did Ana eat?", "answer": "-", "evidence": ["D1:2"], "category": 5},
            {"question": "Unanswerable here", "answer": "-", "evidence": ["D9:9"], "category": 2},
        ],
    }


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "locomo.json"
    path.write_text(json.dumps([conversation()]))
    return path


class BagOfWords:
    """A tiny embedder for the test: hashed word counts, unit length."""

    def embed(self, texts: list[str]) -> np.ndarray[Any, Any]:
        rows = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                rows[row, zlib.crc32(word.encode()) % 64] += 1
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows / np.where(norms == 0, 1, norms)


def test_a_locomo_sample_becomes_dated_turns_with_their_dia_ids(dataset: Path) -> None:
    sample = locomo.load(dataset)[0]
    assert [t.session for t in sample.turns] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
    first = sample.turns[0]
    assert first.user.text == "Ana: I adopted a greyhound called Pixel last weekend!"
    assert first.assistant is not None
    assert first.assistant.text == "Ben: Congratulations! [shares a photo: a photo of a cake]"
    assert first.at.isoformat() == "2023-05-08T13:56:00+00:00"
    assert sample.turns[-1].assistant is None
    # categories 1-4 only; malformed evidence ids normalised, missing ones kept aside
    assert [(q.category, q.evidence, q.unmapped) for q in sample.questions] == [
        (4, ("D1:1",), ()),
        (1, ("D2:5", "D2:6"), ()),
        (2, (), ("D9:9",)),
    ]


def test_fill_takes_the_best_first_and_returns_them_in_order() -> None:
    assert baselines.fill([3, 0, 2, 1], [5, 5, 50, 5], room=12) == [0, 3]
    assert baselines.fuse([[0, 1, 2], [1, 0, 2]]) == [1, 0, 2]  # a tie goes to the newer turn
    assert baselines.fuse([[0, 1, 2], [0, 2, 1]])[0] == 0


def test_every_strategy_and_baseline_is_measured_on_the_replayed_turns(
    dataset: Path, redis_url: str, tmp_path: Path
) -> None:
    samples = locomo.load(dataset)
    settings = Settings(memory={"history_turns": 2, "block_turns": 2}, llm={"offline_delay_seconds": 0})
    results = replay.run(
        samples, settings, redis_url, budgets=(8_000, 150), strategies=None, embedder=BagOfWords()
    )

    methods = {o.method for o in results.outcomes}
    assert {"window", "hybrid", *replay.BASELINES} <= methods
    assert results.skipped_questions == 1 and results.unmapped_evidence == 1
    by = {(o.method, o.budget, o.category): o for o in results.outcomes}
    # A big budget holds the whole conversation: the baselines find all of it (the strategies
    # load the last history_turns + 2 * block_turns turns at most)
    for method in ("recency", "bm25", "dense", "fused"):
        assert by[(method, 8_000, 4)].complete and by[(method, 8_000, 1)].complete
    # The window keeps the last two turns only: the greyhound (turn 1) is not in it
    assert by[("window", 8_000, 4)].found == 0
    # A budget of a few turns: recency keeps the end, BM25 finds the greyhound by its words
    assert by[("recency", 150, 4)].found == 0 and by[("bm25", 150, 4)].found == 1
    assert all(o.prompt_tokens <= o.budget for o in results.outcomes if o.method in replay.BASELINES)

    meta = {"command": "test", "model": "offline", "samples": results.samples, "turns": 11}
    meta |= {"questions": 2, "skipped_questions": 1, "unmapped_evidence": 1, "runtime_seconds": 0}
    text = locomo_report.write(results, tmp_path, meta)
    figures = json.loads((tmp_path / "locomo.json").read_text())
    assert figures["budgets"]["8000"]["fused"]["all"]["evidence_recall"] == 1.0
    assert set(figures["budgets"]["8000"]["window"]) == {"all", "1 multi-hop", "4 single-hop"}
    assert "## Budget 150 tokens" in text and (tmp_path / "locomo.png").stat().st_size > 0
    assert figures["budgets"]["150"]["bm25"]["all"]["over_budget"] == 0
    lines = locomo_report.details(results, tmp_path / "details.jsonl").read_text().splitlines()
    assert len(lines) == len(results.outcomes) and json.loads(lines[0])["question"] in (0, 1)


def test_replayed_turns_carry_their_session_date_and_questions_are_not_stored(
    dataset: Path, redis_url: str
) -> None:
    samples = locomo.load(dataset)
    settings = Settings(llm={"offline_delay_seconds": 0})
    results = replay.run(
        samples, settings, redis_url, budgets=(8_000,), strategies=["window"], embedder=BagOfWords()
    )
    stored = results.stored["tiny-1"]
    assert len(stored) == 11  # the questions were planned, never stored
    assert stored[0].at == int(samples[0].turns[0].at.timestamp())
    assert stored[3].at == int(samples[0].turns[3].at.timestamp())  # session 2's first turn
    assert stored[-1].user == "Ana: See you soon." and stored[-1].assistant == ""


def test_the_command_says_where_the_dataset_comes_from() -> None:
    # A process of its own: the command sets Powertools' environment for itself.
    env = {k: v for k, v in os.environ.items() if k != "LOCOMO_PATH"}
    done = subprocess.run(
        [sys.executable, "-m", "evaluation", "--redis-url", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "downloaded separately" in done.stderr
