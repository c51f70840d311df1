"""The two model calls that maintain memory: extend the running summary, extract facts.

Both send a marker in the system prompt (``SUMMARY_TASK``, ``FACTS_TASK``) so the offline
model knows which task it is given; Claude reads them as plain instructions.
"""

from __future__ import annotations

import json
import re

from pydantic import TypeAdapter, ValidationError

from chatmemory.llm.base import ChatModel, Prompt
from chatmemory.memory.state import Fact, FactChange, render_facts
from chatmemory.turns import Turn, Usage

SUMMARY_TASK = "<memory-task>summary</memory-task>"
FACTS_TASK = "<memory-task>facts</memory-task>"

SUMMARY_SYSTEM = (
    SUMMARY_TASK + "\nYou maintain the running summary of a conversation between a user and an assistant. "
    "You get the current summary and the turns that follow it. Answer with the updated summary only: "
    "plain sentences, at most {words} words, most important first. Keep what the user said about "
    "themselves, their goals, preferences, decisions, deadlines and open questions; drop small talk."
)
FACTS_SYSTEM = (
    FACTS_TASK + "\nYou keep a list of durable facts the user has stated about themselves and their work: "
    "name, preferences, goals, decisions, deadlines, constraints. You get the known facts and new turns. "
    'Answer with a JSON array of changes only, each {{"key": short lowercase topic, "value": the fact '
    'in a few words}}. Reuse a known key when a fact changes; use "value": null when the user retracts '
    "one. Answer [] when nothing durable was stated. No prose."
)

# A message that looks like it states something durable about the user: their long-term memory
# is brought up to date after that turn rather than a few turns later. Only a hint: the model
# decides what is a fact; a miss waits for the next regular merge.
STATES_FACT = re.compile(
    r"\b(?:my (?:[a-z]+ ){0,2}?[a-z]+ (?:is|are|was)|i am|i'm|call me|remember"
    r"|i (?:prefer|like|love|hate|live|work|decided|have decided|want)|i've decided)\b",
    re.IGNORECASE,
)

_changes: TypeAdapter[list[FactChange]] = TypeAdapter(list[FactChange])
_JSON_ARRAY = re.compile(r"\[.*\]", re.DOTALL)


class MemoryTaskFailed(Exception):
    """The model's answer could not be used; nothing is stored and the update is retried."""


def states_fact(message: str) -> bool:
    return STATES_FACT.search(message) is not None


def transcript(turns: list[Turn]) -> str:
    parts = []
    for t in turns:
        parts.append(f'<turn n="{t.turn}">\n<user>{t.user}</user>')
        if t.assistant:
            parts.append(f"<assistant>{t.assistant}</assistant>")
        parts.append("</turn>")
    return "<turns>\n" + "\n".join(parts) + "\n</turns>"


def complete(model: ChatModel, prompt: Prompt) -> tuple[str, Usage]:
    with model.stream(prompt) as reply:
        text = "".join(reply.chunks)
    return text.strip(), reply.usage


def summarize(model: ChatModel, previous: str, turns: list[Turn], max_tokens: int) -> tuple[str, int]:
    """The summary extended with ``turns``, and its length in tokens as the model counted it."""
    prompt = Prompt(
        system=SUMMARY_SYSTEM.format(words=max(30, int(max_tokens * 0.7))),
        messages=[
            {
                "role": "user",
                "content": f"<summary>\n{previous}\n</summary>\n{transcript(turns)}",
            }
        ],
        max_tokens=max_tokens,
    )
    text, usage = complete(model, prompt)
    if not text:
        raise MemoryTaskFailed("empty summary")
    return text, usage.output_tokens


def extract_facts(model: ChatModel, facts: list[Fact], turns: list[Turn]) -> list[FactChange]:
    prompt = Prompt(
        system=FACTS_SYSTEM,
        messages=[
            {"role": "user", "content": f"<facts>\n{render_facts(facts)}\n</facts>\n{transcript(turns)}"}
        ],
        max_tokens=1024,
    )
    text, _ = complete(model, prompt)
    found = _JSON_ARRAY.search(text)
    if found is None:
        raise MemoryTaskFailed("no JSON array in the facts answer")
    try:
        return _changes.validate_python(json.loads(found.group(0)))
    except (ValueError, ValidationError) as exc:
        raise MemoryTaskFailed("the facts answer is not a list of changes") from exc
