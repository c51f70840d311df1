"""LoCoMo conversations as chat turns, read from a file the user downloads separately.

LoCoMo (Maharana et al., "Evaluating Very Long-Term Conversational Memory of LLM Agents",
ACL 2024; CC BY-NC 4.0) is never copied into this repository: ``load`` reads the benchmark's
JSON (a list of samples, as the authors publish it in ``data/locomo10.json``) from the path it
is given.

Each session's dialog turns become chat turns two at a time, in order: the first of a pair is
the user's message, the second the assistant's reply (a session with an odd count ends with a
message whose reply is empty). Each side is written ``Speaker: text`` (plus the photo's caption
when the speaker shared one), so the name a question asks about is in the turn, and keeps its
``dia_id`` so a question's evidence can be found in a prompt.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}  # 5: adversarial
_DIA_ID = re.compile(r"D:?(\d+):(\d+)")
_SESSION = re.compile(r"session_(\d+)$")


@dataclass(frozen=True)
class Side:
    dia_id: str
    text: str  # "Speaker: what they said [shares a photo of ...]"


@dataclass(frozen=True)
class ChatTurn:
    """One stored turn: a message and its reply, said at ``at`` (the session's date)."""

    number: int  # 1, 2, ... across the conversation, as the store numbers them
    session: int
    at: datetime
    user: Side
    assistant: Side | None  # None: the session's last message had no reply


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    category: int
    evidence: tuple[str, ...]  # dia_ids that hold the answer, those found in the conversation
    unmapped: tuple[str, ...] = ()  # evidence ids the conversation does not have (dataset errors)


@dataclass(frozen=True)
class Sample:
    sample_id: str
    turns: list[ChatTurn]
    questions: list[Question]
    sides: dict[str, Side] = field(default_factory=dict)  # dia_id -> the side that says it

    @property
    def last_date(self) -> datetime:
        return self.turns[-1].at


def parse_date(text: str) -> datetime:
    """LoCoMo's ``session_N_date_time``: ``1:56 pm on 8 May, 2023``."""
    return datetime.strptime(" ".join(text.split()), "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)


def side_text(dialog: dict[str, Any]) -> str:
    text = f"{dialog['speaker']}: {dialog['text']}"
    caption = dialog.get("blip_caption")
    if caption:
        text += f" [shares a photo: {caption}]"
    return text


def evidence_ids(raw: list[str]) -> list[str]:
    """Normalised ``D<session>:<dialog>`` ids (the dataset has a few like ``D8:6; D9:17``)."""
    found: list[str] = []
    for item in raw:
        for session, dialog in _DIA_ID.findall(str(item)):
            found.append(f"D{int(session)}:{int(dialog)}")
    return found


def to_sample(raw: dict[str, Any]) -> Sample:
    conversation = raw["conversation"]
    sessions = sorted(
        (int(match.group(1)), key)
        for key in conversation
        if (match := _SESSION.match(key)) and isinstance(conversation[key], list)
    )
    turns: list[ChatTurn] = []
    sides: dict[str, Side] = {}
    for index, key in sessions:
        at = parse_date(conversation[f"{key}_date_time"])
        dialogs = conversation[key]
        for start in range(0, len(dialogs), 2):
            pair = [Side(d["dia_id"], side_text(d)) for d in dialogs[start : start + 2]]
            for side in pair:
                sides[side.dia_id] = side
            turns.append(ChatTurn(len(turns) + 1, index, at, pair[0], pair[1] if len(pair) > 1 else None))
    questions = []
    for qa in raw["qa"]:
        if qa.get("category") not in CATEGORIES:
            continue
        ids = evidence_ids(qa.get("evidence", []))
        questions.append(
            Question(
                text=str(qa["question"]),
                answer=str(qa.get("answer", "")),
                category=int(qa["category"]),
                evidence=tuple(i for i in ids if i in sides),
                unmapped=tuple(i for i in ids if i not in sides),
            )
        )
    return Sample(str(raw.get("sample_id", "")), turns, questions, sides)


def load(path: Path, conversations: int | None = None) -> list[Sample]:
    """The samples of a LoCoMo JSON file, the first ``conversations`` of them if given."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected LoCoMo's list of samples")
    return [to_sample(raw) for raw in data[:conversations]]


def truncated(sample: Sample, turns: int | None = None, questions: int | None = None) -> Sample:
    """The first ``turns`` turns, with the questions whose evidence they hold, at most
    ``questions`` of those (for quick runs)."""
    kept = sample.turns[:turns] if turns is not None else sample.turns
    sides = {s.dia_id: s for t in kept for s in (t.user, t.assistant) if s is not None}
    asked = [q for q in sample.questions if all(e in sides for e in q.evidence)]
    return Sample(sample.sample_id, kept, asked[:questions], sides)
