"""With a real model (``ANTHROPIC_API_KEY``, or ``LLM__PROVIDER=bedrock``): the questions answered
from the prompt each memory built, graded by the model against LoCoMo's answer (an LLM judge, as
the LoCoMo and Mem0 papers grade), and each running summary checked against source turns it
covers (the summary-quality check of the memory-manager tutorial: three sampled turns, a 0-1
score). The offline model is extractive: it cannot answer or judge, so without a real model
these figures are reported as not measured, never estimated.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from chatmemory.llm.base import ChatModel, Message, Prompt
from chatmemory.turns import Turn

ANSWER_TOKENS = 200  # a short answer: what the question asks, not an essay
JUDGE_SYSTEM = "You grade answers to questions about a long conversation. Reply with JSON only."
JUDGE_PROMPT = """Question: {question}
Gold answer: {gold}
Generated answer: {answer}

The generated answer is CORRECT if it states the same fact as the gold answer (wording, extra
detail and date formats may differ; a relative date that resolves to the gold one counts), and
WRONG if it contradicts it, misses it, or says it does not know.
Reply with {{"label": "CORRECT"}} or {{"label": "WRONG"}}."""
SUMMARY_SYSTEM = "You check whether a summary keeps what a conversation said. Reply with JSON only."
SUMMARY_PROMPT = """Summary:
{summary}

Turns of the conversation it should cover:
{turns}

How much of the key facts and details of these turns does the summary state accurately?
Reply with {{"score": <0.0 to 1.0>, "missing": ["..."]}}."""
_JSON = re.compile(r"\{.*?\}", re.S)


def _text(model: ChatModel, prompt: Prompt) -> str:
    with model.stream(prompt) as reply:
        return "".join(reply.chunks)


def _objects(text: str) -> list[dict[str, object]]:
    """The JSON objects in a reply, which may wrap them in prose or a code fence."""
    found = []
    for match in _JSON.finditer(text):
        try:
            value = json.loads(match.group())
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def parse_label(text: str) -> bool | None:
    """``True`` for CORRECT, ``False`` for WRONG, ``None`` when the reply says neither."""
    for value in _objects(text):
        label = str(value.get("label", "")).strip().upper()
        if label in ("CORRECT", "WRONG"):
            return label == "CORRECT"
    words = set(re.findall(r"\b(CORRECT|WRONG)\b", text.upper()))
    return next(iter(words)) == "CORRECT" if len(words) == 1 else None


def parse_score(text: str) -> float | None:
    for value in _objects(text):
        score = value.get("score")
        if isinstance(score, int | float) and 0 <= score <= 1:
            return float(score)
    return None


def _single(system: str, content: str, max_tokens: int) -> Prompt:
    messages: list[Message] = [{"role": "user", "content": content}]
    return Prompt(system=system, messages=messages, max_tokens=max_tokens)


@dataclass(frozen=True)
class Judge:
    model: ChatModel

    def grade(self, request: Prompt, question: str, gold: str) -> bool | None:
        """Answer ``question`` from the memory's own prompt, then grade that answer."""
        answer = _text(
            self.model, Prompt(request.system, request.messages, ANSWER_TOKENS, request.cache_after)
        )
        verdict = _text(
            self.model,
            _single(JUDGE_SYSTEM, JUDGE_PROMPT.format(question=question, gold=gold, answer=answer), 50),
        )
        return parse_label(verdict)

    def summary_quality(self, summary: str, covered: list[Turn], seed: int, samples: int = 3) -> float | None:
        """The model's 0-1 score of how well ``summary`` keeps ``samples`` of the turns it covers."""
        chosen = sorted(random.Random(seed).sample(covered, min(samples, len(covered))), key=lambda t: t.turn)
        if not summary or not chosen:
            return None
        turns = "\n\n".join(f"User: {t.user}\nAssistant: {t.assistant or ''}" for t in chosen)
        return parse_score(
            _text(
                self.model, _single(SUMMARY_SYSTEM, SUMMARY_PROMPT.format(summary=summary, turns=turns), 300)
            )
        )
