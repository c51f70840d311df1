"""The model calls that maintain memory: extend the running summary, extract facts, and title
a new conversation.

Each sends a marker in the system prompt (``SUMMARY_TASK``, ``FACTS_TASK``) so the offline
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
TITLE_TASK = "<memory-task>title</memory-task>"

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

TITLE_SYSTEM = (
    TITLE_TASK + "\nYou name conversations for the user's list of chats. You get the first exchange of "
    "a conversation. Answer with its title only: 2 to 6 words, in the language the user wrote in, "
    "no quotes, no final period."
)
TITLE_MAX_CHARS = 80
TITLE_MAX_TOKENS = 40
_TITLE_EXCERPT_CHARS = 1_500  # of each side of the exchange: enough to name it
_TITLE_LABEL = re.compile(r"\A(?:(?:conversation|chat) )?title\s*[:\-]\s*", re.IGNORECASE)
_TITLE_TRIM = " \t\"'\u201c\u201d\u2018\u2019*#_`."

# A message that looks like it states something durable about the user: their long-term memory
# is brought up to date after that turn rather than a few turns later. Only a hint: the model
# decides what is a fact; a miss waits for the next regular merge.
STATES_FACT = re.compile(
    r"\b(?:my (?:[a-z]+ ){0,2}?[a-z]+ (?:is|are|was)|i am|i'm|call me|remember"
    r"|i (?:prefer|like|love|hate|live|work|decided|have decided|want)|i've decided)\b",
    re.IGNORECASE,
)

_changes: TypeAdapter[list[FactChange]] = TypeAdapter(list[FactChange])
_change: TypeAdapter[FactChange] = TypeAdapter(FactChange)
_FENCED = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)
_PREAMBLE = re.compile(r"\A\s*here(?: is|'s) [^\n]{0,80}:\s*\n", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
# Words asked of a summary per token of its budget: an English word is 1.3-1.5 tokens, so 0.5
# leaves room for a model that overshoots a little (at 0.7, a full summary hit max_tokens).
SUMMARY_WORDS_PER_TOKEN = 0.5
FACTS_MAX_TOKENS = 1024
FACTS_RETRY_MAX_TOKENS = 4096  # once, when the answer was cut at the first budget
_decoder = json.JSONDecoder()


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


def complete(model: ChatModel, prompt: Prompt) -> tuple[str, Usage, bool]:
    """The answer's text, usage, and whether it was cut at ``max_tokens``."""
    with model.stream(prompt) as reply:
        text = "".join(reply.chunks)
    return text.strip(), reply.usage, reply.truncated


def summary_of(text: str, truncated: bool) -> str:
    """The summary in a model's answer: without a preamble ("Here is the updated summary:"),
    and, when the answer was cut at ``max_tokens``, without the sentence it was cut in. The
    summary puts the most important first, so what a cut loses is the least important."""
    text = _PREAMBLE.sub("", text, count=1).strip()
    if truncated:
        lines = text.splitlines()
        if len(lines) > 1:
            return "\n".join(lines[:-1]).strip()
        ends = [m.end() for m in _SENTENCE_END.finditer(text)]
        text = text[: ends[-1]].strip() if ends else ""
    return text


def summarize(model: ChatModel, previous: str, turns: list[Turn], max_tokens: int) -> tuple[str, int]:
    """The summary extended with ``turns``, and its length in tokens as the model counted it."""
    prompt = Prompt(
        system=SUMMARY_SYSTEM.format(words=max(30, int(max_tokens * SUMMARY_WORDS_PER_TOKEN))),
        messages=[
            {
                "role": "user",
                "content": f"<summary>\n{previous}\n</summary>\n{transcript(turns)}",
            }
        ],
        max_tokens=max_tokens,
    )
    answer, usage, truncated = complete(model, prompt)
    text = summary_of(answer, truncated)
    if not text:
        raise MemoryTaskFailed("empty summary")
    tokens = usage.output_tokens
    if len(text) < len(answer):  # the model counted what was dropped too
        tokens = max(1, round(tokens * len(text) / max(1, len(answer))))
    return text, tokens


def extract_facts(model: ChatModel, facts: list[Fact], turns: list[Turn]) -> list[FactChange]:
    """The changes the model found in ``turns``. An answer cut at ``max_tokens`` is asked for
    once more with a larger budget; cut again, its complete changes are used (each stands
    alone), so a long answer never blocks the updates after it."""
    content = f"<facts>\n{render_facts(facts)}\n</facts>\n{transcript(turns)}"
    for max_tokens in (FACTS_MAX_TOKENS, FACTS_RETRY_MAX_TOKENS):
        prompt = Prompt(
            system=FACTS_SYSTEM, messages=[{"role": "user", "content": content}], max_tokens=max_tokens
        )
        text, _, truncated = complete(model, prompt)
        if not truncated:
            return parse_changes(text)
    return parse_changes(text, truncated=True)


def parse_changes(text: str, truncated: bool = False) -> list[FactChange]:
    """The list of changes in a facts answer: the whole answer, a fenced ``json`` block, or an
    array inside prose (prose may hold other brackets: the longest array of changes wins).
    ``truncated``: the answer was cut, so its array may be open; the complete changes in it."""
    fenced = [m.group(1) for m in _FENCED.finditer(text)]
    for candidate in (*fenced, text):
        found = _arrays(candidate)
        if found:
            return max(reversed(found), key=len)
    if truncated:
        return _complete_changes(text)
    raise MemoryTaskFailed("no list of changes in the facts answer")


def _arrays(text: str) -> list[list[FactChange]]:
    found = []
    for start in (i for i, c in enumerate(text) if c == "["):
        try:
            value, _ = _decoder.raw_decode(text, start)
            found.append(_changes.validate_python(value))
        except (ValueError, ValidationError):
            continue
    return found


def _complete_changes(text: str) -> list[FactChange]:
    """The complete ``{...}`` changes of an array the answer was cut in."""
    opened = text.rfind("[")
    changes = []
    for start in (i for i, c in enumerate(text) if c == "{" and i > opened >= 0):
        try:
            value, _ = _decoder.raw_decode(text, start)
            changes.append(_change.validate_python(value))
        except (ValueError, ValidationError):
            continue
    return changes


def make_title(model: ChatModel, turns: list[Turn]) -> str:
    """A few words that name the conversation, from its first exchange."""
    excerpt = [
        t.model_copy(
            update={
                "user": t.user[:_TITLE_EXCERPT_CHARS],
                "assistant": (t.assistant or "")[:_TITLE_EXCERPT_CHARS] or None,
            }
        )
        for t in turns
    ]
    prompt = Prompt(
        system=TITLE_SYSTEM,
        messages=[{"role": "user", "content": transcript(excerpt)}],
        max_tokens=TITLE_MAX_TOKENS,
    )
    answer, _, _ = complete(model, prompt)
    title = title_of(answer)
    if not title:
        raise MemoryTaskFailed("empty title")
    return title


def title_of(text: str) -> str:
    """The title in a model's answer: its first line, without a label ("Title:"), quotes,
    markdown or a final period, at most ``TITLE_MAX_CHARS`` (cut at a word)."""
    lines = [line for line in text.splitlines() if line.strip(_TITLE_TRIM)]
    if len(lines) > 1 and lines[0].rstrip().endswith(":"):  # "Here's a title for this chat:"
        lines = lines[1:]
    line = lines[0] if lines else ""
    line = _TITLE_LABEL.sub("", line.strip(_TITLE_TRIM)).strip(_TITLE_TRIM)
    line = " ".join(line.split())
    if len(line) > TITLE_MAX_CHARS:
        line = line[:TITLE_MAX_CHARS].rsplit(" ", 1)[0].rstrip(" ,;:-")
    return line
