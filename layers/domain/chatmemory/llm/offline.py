"""The offline model: a deterministic stand-in for Claude that speaks the Messages API.

It is an HTTP transport for the SDK's own client, so requests are built, sent and the SSE
stream parsed by exactly the code that talks to Claude. It has two modes:

- ``realistic`` (the default): replies shaped like Claude's. Their length follows a log-normal
  distribution (median about 310 tokens, about 4% over 2,000, cut at the request's
  ``max_tokens`` with ``stop_reason: "max_tokens"`` as the API does), in markdown with
  headings, lists, code blocks and non-ASCII text. The text is chosen by a seed drawn from the
  request, so the same request gets the same reply. It never repeats earlier user messages:
  what memory a prompt carried shows in ``usage`` and in the ``done`` frame, not in the reply.
- ``echo``: a short, transparent reply for demos and debugging: how many earlier turns it
  received, whether a summary, facts or long-term facts came with them, and the earlier user
  messages, shortened.

Usage is counted the way the API counts: the system prompt, each message with its role
overhead, and a per-request overhead, with a tokenizer close to Claude's on English prose
(about four characters a token; non-ASCII characters cost more).

It also does the memory tasks, recognised by their marker in the system prompt, in both modes:
it extends a summary with the user's first-person statements, and extracts facts from
phrasings such as "my name is X", "I prefer X", "my deadline is X", "I decided X". In realistic
mode it answers them the ways Claude does, including the ways that go wrong: a facts array
inside prose or a fenced block, a summary that overshoots its word limit, an answer cut at
``max_tokens``. And it simulates Anthropic's prompt cache: a request whose prefix, up to a
``cache_control`` breakpoint, matches one an earlier request marked reports it as
``cache_read_input_tokens``.

It can be told to misbehave, for demonstrations and fault tests, by a directive in the
user's message: ``[offline:429]`` (rate limited), ``[offline:529]`` (overloaded),
``[offline:cut]`` (the stream breaks midway), ``[offline:slow=SECONDS]`` (pause between
chunks).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Literal

import httpx2

from chatmemory.memory.tasks import FACTS_TASK, SUMMARY_TASK, TITLE_TASK

OfflineMode = Literal["realistic", "echo"]

QUOTE_CHARS = 60
CHUNK_WORDS = 3
FIRST_CHUNK_PAUSES = 2  # the time to the first token, in chunk pauses
DIRECTIVE = re.compile(r"\[offline:(429|529|cut|slow=\d+(?:\.\d+)?)\]")
STATUS_ERRORS = {"429": (429, "rate_limit_error"), "529": (529, "overloaded_error")}
CACHE_LOOKBACK_BLOCKS = 20  # how far before a breakpoint the API looks for an earlier one
CACHE_ENTRIES = 10_000
REQUEST_OVERHEAD = 3  # tokens the API adds to every request
SYSTEM_OVERHEAD = 2  # around the system prompt
MESSAGE_OVERHEAD = 4  # around each message: its role markers
# Reply lengths: log-normal around 320 tokens (measured median 313); about 4% over 2,000.
REPLY_MEDIAN_TOKENS = 320
REPLY_SIGMA = 1.1
REPLY_TOKENS = (12, 6000)
FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|my|we|our)\b", re.IGNORECASE)
_CLAUSE = r"([^.!?;\n]{1,120})"
FACT_PATTERNS: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"\bmy name is " + _CLAUSE, re.IGNORECASE), "name"),
    (re.compile(r"\bcall me " + _CLAUSE, re.IGNORECASE), "name"),
    (re.compile(r"\bi (?:prefer|like|love) " + _CLAUSE, re.IGNORECASE), "preference"),
    (re.compile(r"\bi(?:'ve| have)? decided (?:to |that |on )?" + _CLAUSE, re.IGNORECASE), "decision"),
    (re.compile(r"\bmy ((?:[a-z]+ ){0,2}?[a-z]+) (?:is|are) " + _CLAUSE, re.IGNORECASE), None),
]
TURN_USER = re.compile(r"<user>(.*?)</user>", re.DOTALL)
SUMMARY_WORDS = re.compile(r"at most (\d+) words")
_PIECE = re.compile(r"[A-Za-z]+|\d{1,3}|\s+|.", re.DOTALL)


def _pieces(text: str) -> Iterator[tuple[int, int]]:
    """(start offset, tokens) of each piece of ``text``, close to Claude's tokenizer on prose:
    a word of up to five letters is one token, longer ones more; a single space joins the
    word after it; other whitespace runs, punctuation and digit triples are a token each;
    characters beyond Latin, Greek and Cyrillic cost two, CJK one."""
    for match in _PIECE.finditer(text):
        piece = match.group(0)
        if piece[0].isalpha() and piece.isascii():
            cost = 1 + (len(piece) - 1) // 5
        elif piece.isspace():
            cost = 0 if piece == " " else 1
        elif piece.isdigit() or ord(piece) < 0x800 or 0x3000 <= ord(piece) <= 0x9FFF:
            cost = 1
        else:
            cost = 2
        yield match.start(), cost


def count_tokens(text: str) -> int:
    return sum(cost for _, cost in _pieces(text))


def estimate_tokens(text: str) -> int:
    """Tokens of a generated text (at least one)."""
    return max(1, count_tokens(text))


def cut_at_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """``text`` cut after ``max_tokens`` tokens, as a reply stopped by ``max_tokens`` is, and
    whether it was cut."""
    used = 0
    for start, cost in _pieces(text):
        used += cost
        if used > max_tokens:
            return text[:start], True
    return text, False


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= QUOTE_CHARS else flat[: QUOTE_CHARS - 1] + "…"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))


def seed_of(body: dict[str, Any]) -> int:
    """The same prompt, the same seed: replies are reproducible, one asked with a smaller
    ``max_tokens`` is the same reply cut shorter, and a directive changes how the reply comes,
    not what it says."""
    canonical = DIRECTIVE.sub("", json.dumps([body.get("system"), body.get("messages")], sort_keys=True))
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big")


def compose_echo_reply(system: str, messages: list[dict[str, Any]]) -> str:
    """The echo mode's answer: what memory the request carried, in two or three lines."""
    *earlier, last = messages
    earlier_user = [_text_of(m["content"]) for m in earlier if m["role"] == "user"]
    lowered = system.lower()
    extras = [name for name in ("summary", "facts") if f"<{name}>" in lowered]
    if "<user-facts>" in lowered:
        extras.append("long-term facts")
    said = _text_of(last["content"])
    if not earlier_user:
        memory = "I see no earlier turns of this conversation"
    else:
        memory = f"I see {len(earlier_user)} earlier turn{'s' if len(earlier_user) != 1 else ''}"
    memory += f" ({' and '.join(extras) if extras else 'no summary, no facts'})."
    lines = [f"[offline model] {memory}"]
    if earlier_user:
        lines.append(
            "Earlier you said: " + "; ".join(f'{i}. "{_shorten(t)}"' for i, t in enumerate(earlier_user, 1))
        )
    lines.append(f'You just said: "{_shorten(said)}".')
    return "\n".join(lines)


# ---- realistic replies ---------------------------------------------------------------------

_STOP = frozenset(
    [
        "about",
        "after",
        "again",
        "also",
        "because",
        "been",
        "before",
        "could",
        "does",
        "doing",
        "from",
        "have",
        "here",
        "into",
        "just",
        "like",
        "more",
        "most",
        "much",
        "only",
        "other",
        "over",
        "please",
        "some",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "very",
        "want",
        "what",
        "when",
        "where",
        "which",
        "while",
        "with",
        "would",
        "your",
        "you",
    ]
)
_NOUNS = [
    "approach",
    "request",
    "handler",
    "cache",
    "table",
    "session",
    "budget",
    "index",
    "query",
    "schema",
    "service",
    "queue",
    "deadline",
    "trade-off",
    "baseline",
    "latency",
    "throughput",
    "retry",
    "timeout",
    "backoff",
    "record",
    "summary",
    "boundary",
    "interface",
    "module",
    "function",
    "test",
    "fixture",
    "migration",
    "release",
    "rollout",
    "metric",
]
_VERBS = [
    "keeps",
    "moves",
    "checks",
    "returns",
    "stores",
    "reads",
    "limits",
    "splits",
    "measures",
    "avoids",
    "retries",
    "validates",
]
_ADJECTIVES = [
    "simple",
    "robust",
    "small",
    "explicit",
    "careful",
    "idempotent",
    "cheap",
    "strict",
    "separate",
    "durable",
]
_OPENERS = (
    "Good question.",
    "Here is how I would approach it.",
    "Short answer: it depends on the trade-off you care about most.",
    "Let me break this down.",
    "There are a few ways to look at this.",
)
_ACCENTED = ("café", "naïve", "résumé", "façade", "über", "déjà vu", "coöperate", "Zürich", "São Paulo")
_FOREIGN = (
    "En français : « la simplicité est la sophistication suprême ».",
    "Auf Deutsch: Übung macht den Meister — größer ist nicht immer besser.",
    "日本語では「急がば回れ」と言います。",
    "По-русски: тише едешь — дальше будешь.",
    "En español: poco a poco se va lejos.",
)
_SYMBOLS = ("→", "≈", "≤", "✅", "⚠️", "…", "—", "“", "”", "°C", "€", "½")
_LANGUAGES = ("python", "python", "javascript", "bash", "json", "sql")


def _topic(said: str) -> list[str]:
    words = [w.lower() for w in re.findall(r"[A-Za-z]{4,}", said) if w.lower() not in _STOP]
    unique = list(dict.fromkeys(words))[:3]
    return unique or ["this"]


def _sentence(rng: random.Random, topic: list[str]) -> str:
    subject = rng.choice(
        [
            f"the {rng.choice(_NOUNS)}",
            f"a {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}",
            f"your {rng.choice(topic)}",
        ]
    )
    middle = " ".join(
        rng.choice([rng.choice(_NOUNS), rng.choice(_ADJECTIVES), rng.choice(topic), "and", "the", "of"])
        for _ in range(rng.randint(3, 12))
    )
    if rng.random() < 0.12:
        middle += f" {rng.choice(_SYMBOLS)} {rng.choice(_ACCENTED)}"
    if rng.random() < 0.15:
        middle = f"`{rng.choice(_NOUNS)}_{rng.choice(_NOUNS).replace('-', '_')}` " + middle
    text = f"{subject} {rng.choice(_VERBS)} {middle}"
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "!", "?", ";"]).replace(";", ".")


def _paragraph(rng: random.Random, topic: list[str]) -> str:
    return " ".join(_sentence(rng, topic) for _ in range(rng.randint(2, 5)))


def _code(rng: random.Random, topic: list[str]) -> str:
    language = rng.choice(_LANGUAGES)
    name = f"{rng.choice(_VERBS)[:-1]}_{rng.choice(_NOUNS).replace('-', '_')}"
    word = rng.choice(topic)
    if language == "python":
        body = (
            f"def {name}(items: list[str], limit: int = {rng.randint(2, 64)}) -> dict[str, int]:\n"
            f'    """{rng.choice(_ADJECTIVES).capitalize()} by design: {word} → counts."""\n'
            "    counts: dict[str, int] = {}\n"
            "    for item in items[:limit]:\n"
            "        counts[item] = counts.get(item, 0) + 1\n"
            "    return counts\n"
        )
    elif language == "javascript":
        body = (
            f"async function {name.replace('_', '')}(url) {{\n"
            f"  const response = await fetch(url, {{ headers: {{ 'x-topic': '{word}' }} }});\n"
            "  if (!response.ok) throw new Error(`HTTP ${response.status}`);\n"
            "  return response.json();\n"
            "}\n"
        )
    elif language == "bash":
        body = f"set -euo pipefail\nfor f in ./{word}/*.log; do\n  grep -c 'ERROR' \"$f\" || true\ndone\n"
    elif language == "json":
        body = json.dumps(
            {"name": name, "topic": word, "limit": rng.randint(1, 99), "note": rng.choice(_ACCENTED)},
            ensure_ascii=False,
            indent=2,
        )
        body += "\n"
    else:
        body = (
            f"SELECT {word}, COUNT(*) AS n\nFROM {rng.choice(_NOUNS).replace('-', '_')}s\nGROUP BY {word};\n"
        )
    return f"```{language}\n{body}```"


def _block(rng: random.Random, topic: list[str]) -> str:
    roll = rng.random()
    if roll < 0.15:
        return f"{'#' * rng.choice((2, 3))} {rng.choice(topic).capitalize()}: {rng.choice(_NOUNS)}"
    if roll < 0.35:
        marker = rng.choice(("-", "1."))
        return "\n".join(
            f"{marker} **{rng.choice(_NOUNS).capitalize()}**: {_sentence(rng, topic)}"
            for _ in range(rng.randint(3, 6))
        )
    if roll < 0.5:
        return _code(rng, topic)
    if roll < 0.55:
        return rng.choice(_FOREIGN)
    return _paragraph(rng, topic)


def reply_length(rng: random.Random) -> int:
    """How many tokens the reply wants, before ``max_tokens``: log-normal."""
    low, high = REPLY_TOKENS
    return int(min(high, max(low, rng.lognormvariate(math.log(REPLY_MEDIAN_TOKENS), REPLY_SIGMA))))


def compose_realistic_reply(rng: random.Random, said: str) -> str:
    """A markdown reply of a length drawn from the distribution. It reads only the new
    message (for a topic word or two), never the earlier turns."""
    topic = _topic(said)
    target = reply_length(rng)
    blocks = [rng.choice(_OPENERS)]
    used = count_tokens(blocks[0])
    while used < target:
        block = _block(rng, topic)
        blocks.append(block)
        used += count_tokens(block) + 1
    return "\n\n".join(blocks)


# ---- memory tasks --------------------------------------------------------------------------


def compose_task_reply(
    system: str, messages: list[dict[str, Any]], rng: random.Random | None = None
) -> str | None:
    """The answer to a memory task, or ``None`` when the request is a chat turn. Without
    ``rng`` (echo mode), the plain answer; with it, the ways Claude answers, and goes wrong."""
    said = _text_of(messages[-1]["content"])
    if SUMMARY_TASK in system:
        words = SUMMARY_WORDS.search(system)
        return _summarize(said, int(words.group(1)) if words else 200, rng)
    if FACTS_TASK in system:
        return _facts_answer(_extract_facts(said), rng)
    if TITLE_TASK in system:
        return _title(said, rng)
    return None


def _title(request: str, rng: random.Random | None) -> str:
    """A few words from the first message; with ``rng``, dressed the ways Claude dresses them:
    a label, quotes, bold, a final period, or a sentence about the title instead of it."""
    users = TURN_USER.findall(request)
    words = _topic(users[0] if users else request)
    title = " ".join(words).capitalize() if words != ["this"] else "A new conversation"
    if rng is None:
        return title
    roll = rng.random()
    if roll < 0.15:
        return f'Title: "{title}"'
    if roll < 0.25:
        return f"**{title}**"
    if roll < 0.35:
        return f"{title}."
    if roll < 0.42:
        return f"Here's a title for this conversation:\n\n{title}"
    return title


def _section(text: str, tag: str) -> str:
    found = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return found.group(1).strip() if found else ""


def _statements(text: str) -> list[str]:
    """The user's sentences that say something about them (first person), in order."""
    found = []
    for user in TURN_USER.findall(text):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(user.split())):
            if FIRST_PERSON.search(sentence):
                found.append(sentence[:160])
    return found


def _summarize(request: str, words: int, rng: random.Random | None) -> str:
    lines = [line for line in _section(request, "summary").splitlines() if line.strip()]
    lines += [f"The user said: {s}" for s in _statements(request)]
    overshoot = rng is not None and rng.random() < 0.1  # Claude over its word limit
    kept: list[str] = []
    total = 0
    for line in reversed(lines):  # the newest statements, within the word limit
        total += len(line.split())
        if total > words and kept and not overshoot:
            break
        kept.insert(0, line)
    if overshoot and rng is not None:
        kept += [_paragraph(rng, ["conversation"]) for _ in range(max(1, words // 40))]
    text = "\n".join(kept) or "Nothing of note was said yet."
    if rng is not None and rng.random() < 0.15:
        text = "Here is the updated summary:\n\n" + text
    return text


def _extract_facts(request: str) -> list[dict[str, str]]:
    changes: dict[str, str] = {}
    for user in TURN_USER.findall(request):
        for pattern, key in FACT_PATTERNS:
            for match in pattern.finditer(user):
                value = match.group(match.lastindex or 1).strip(" ,")
                name = key or match.group(1).lower()
                changes[name] = value
    return [{"key": k, "value": v} for k, v in changes.items()]


def _facts_answer(changes: list[dict[str, str]], rng: random.Random | None) -> str:
    if rng is None:
        return json.dumps(changes)
    array = json.dumps(changes, ensure_ascii=False, indent=2 if rng.random() < 0.5 else None)
    roll = rng.random()
    if roll < 0.65:
        return array
    if roll < 0.8:
        return f"```json\n{array}\n```"
    if roll < 0.93:
        count = f"{len(changes)} durable fact{'s' if len(changes) != 1 else ''}"
        return (
            f"Looking at the new turns, the user stated {count} (an empty list, [], would mean "
            f"nothing new).\n\n```json\n{array}\n```\n\nI left out small talk [greetings, thanks]."
        )
    # Rambling: reasons at length before the array; cut at max_tokens, usually.
    reasoning = "\n\n".join(
        f"Turn {n}: " + _paragraph(rng, ["fact", "preference", "deadline"]) for n in range(1, 40)
    )
    return f"Let me go through the turns one by one.\n\n{reasoning}\n\nSo the changes are:\n\n{array}"


def request_tokens(system: str, messages: list[dict[str, Any]]) -> int:
    """A request's input tokens as the API counts them: the system prompt and each message
    with their overheads, and the request's own."""
    total = REQUEST_OVERHEAD + (count_tokens(system) + SYSTEM_OVERHEAD if system else 0)
    return total + sum(count_tokens(_text_of(m["content"])) + MESSAGE_OVERHEAD for m in messages)


class PromptCache:
    """Anthropic's prompt cache, simulated: a request's blocks (system, then each message) up to
    its ``cache_control`` breakpoint are written; a later request reads the longest earlier
    entry that is a prefix of its own, looking back up to 20 blocks from its breakpoint."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def usage(self, system: Any, messages: list[dict[str, Any]]) -> tuple[int, int, int]:
        """(input, cache read, cache creation) tokens of a request."""
        system_text = system if isinstance(system, str) else _text_of(system)
        blocks = [("system", system_text)]
        blocks += [(str(m["role"]), _text_of(m["content"])) for m in messages]
        marked = [_marked(system)] + [_marked(m["content"]) for m in messages]
        total = request_tokens(system_text, messages)
        if not any(marked):
            return total, 0, 0
        breakpoint_at = max(i for i, m in enumerate(marked) if m)
        digests, prefix_tokens, digest = [], [], hashlib.sha256()
        length = REQUEST_OVERHEAD
        for i, (role, text) in enumerate(blocks[: breakpoint_at + 1]):
            digest.update(f"{role}\x00{len(text)}\x00{text}".encode())
            digests.append(digest.hexdigest())
            if i == 0:
                length += count_tokens(text) + SYSTEM_OVERHEAD if text else 0
            else:
                length += count_tokens(text) + MESSAGE_OVERHEAD
            prefix_tokens.append(length)
        with self._lock:
            hit = next(
                (
                    i
                    for i in range(breakpoint_at, max(-1, breakpoint_at - CACHE_LOOKBACK_BLOCKS - 1), -1)
                    if digests[i] in self._entries
                ),
                None,
            )
            self._entries[digests[breakpoint_at]] = None
            self._entries.move_to_end(digests[breakpoint_at])
            while len(self._entries) > CACHE_ENTRIES:
                self._entries.popitem(last=False)
        read = prefix_tokens[hit] if hit is not None else 0
        written = prefix_tokens[breakpoint_at] - read
        return max(0, total - read - written), read, written


def _marked(content: Any) -> bool:
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("cache_control") for b in content)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class _ReplyStream(httpx2.SyncByteStream):
    def __init__(
        self, model: str, reply: str, stop_reason: str, usage: dict[str, int], delay: float, cut: bool
    ) -> None:
        self._model, self._reply, self._usage, self._delay = model, reply, usage, delay
        self._stop_reason, self._cut = stop_reason, cut

    def __iter__(self) -> Iterator[bytes]:
        message: dict[str, Any] = {
            "id": f"msg_offline_{uuid.uuid4().hex[:16]}",
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**self._usage, "output_tokens": 1},
        }
        if self._delay:
            time.sleep(self._delay * FIRST_CHUNK_PAUSES)
        yield _sse("message_start", {"type": "message_start", "message": message})
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        words = self._reply.split(" ")
        for start in range(0, len(words), CHUNK_WORDS):
            if self._cut and start >= len(words) // 2:
                raise httpx2.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            piece = " ".join(words[start : start + CHUNK_WORDS])
            if start + CHUNK_WORDS < len(words):
                piece += " "
            if self._delay and start:
                time.sleep(self._delay)
            yield _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": estimate_tokens(self._reply)},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})


class OfflineMessagesApi(httpx2.BaseTransport):
    """Answers ``POST /v1/messages`` (streamed or not) and ``POST /v1/messages/count_tokens``
    like the Messages API would."""

    def __init__(self, delay_seconds: float = 0.0, mode: OfflineMode = "realistic") -> None:
        self._delay = delay_seconds
        self._mode: OfflineMode = mode
        self._cache = PromptCache()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST" and request.url.path.endswith("/v1/messages/count_tokens"):
            return self._count_tokens(request)
        if request.method != "POST" or not request.url.path.endswith("/v1/messages"):
            return _error(
                404, "not_found_error", f"{request.method} {request.url.path} is not served offline"
            )
        try:
            body = json.loads(request.read())
            messages = body["messages"]
            system = body.get("system") or ""
            system_text = system if isinstance(system, str) else _text_of(system)
            model = str(body["model"])
            max_tokens = int(body["max_tokens"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "invalid_request_error", "malformed Messages API request")
        if not messages or messages[-1].get("role") != "user":
            return _error(400, "invalid_request_error", "the last message must come from the user")
        directive = DIRECTIVE.search(_text_of(messages[-1]["content"]))
        command = directive.group(1) if directive else ""
        if command in STATUS_ERRORS:
            status, kind = STATUS_ERRORS[command]
            return _error(status, kind, f"offline model told to answer {status}")
        delay = float(command.removeprefix("slow=")) if command.startswith("slow=") else self._delay
        reply, truncated = cut_at_tokens(self._compose(body, system_text, messages), max_tokens)
        stop_reason = "max_tokens" if truncated else "end_turn"
        fresh, read, written = self._cache.usage(system, messages)
        usage = {
            "input_tokens": fresh,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written,
        }
        if body.get("stream"):
            return httpx2.Response(
                200,
                headers={"content-type": "text/event-stream"},
                stream=_ReplyStream(model, reply, stop_reason, usage, delay, cut=command == "cut"),
            )
        return httpx2.Response(
            200,
            json={
                "id": f"msg_offline_{uuid.uuid4().hex[:16]}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": reply}],
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {**usage, "output_tokens": estimate_tokens(reply)},
            },
        )

    def _compose(self, body: dict[str, Any], system: str, messages: list[dict[str, Any]]) -> str:
        if self._mode == "echo":
            return compose_task_reply(system, messages) or compose_echo_reply(system, messages)
        rng = random.Random(seed_of(body))
        task = compose_task_reply(system, messages, rng)
        if task is not None:
            return task
        return compose_realistic_reply(rng, _text_of(messages[-1]["content"]))

    def _count_tokens(self, request: httpx2.Request) -> httpx2.Response:
        try:
            body = json.loads(request.read())
            system = body.get("system") or ""
            tokens = request_tokens(system if isinstance(system, str) else _text_of(system), body["messages"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return _error(400, "invalid_request_error", "malformed count_tokens request")
        return httpx2.Response(200, json={"input_tokens": tokens})


def _error(status: int, kind: str, message: str) -> httpx2.Response:
    return httpx2.Response(status, json={"type": "error", "error": {"type": kind, "message": message}})
