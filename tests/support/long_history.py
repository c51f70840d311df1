"""Long turns for tests of long conversations: messages near the documented limit and replies
of about 2,000 tokens, in several scripts (UTF-8 takes 1 to 4 bytes a character, and JSON
escapes quotes, backslashes and line breaks), so frames are sized by bytes, not characters."""

from __future__ import annotations

MESSAGE_CHARS = 12_000
REPLY_CHARS = 8_000  # about 2,000 tokens of English prose and code
REPLY_TOKENS = 2_000

_MESSAGE_TEXTS = [
    'Here is my draft, with "quotes", a back\\slash and\ttabs; please review it carefully.\n',
    "Voilà le brouillon : déjà révisé, à relire — merci beaucoup, ça m'aide énormément.\n",
    "これは長い下書きです。注意深く読んで、改善点を教えてください。漢字とかなが混ざっています。\n",
    "Emoji too 🦀🚀✨ and a few more 🧪📚 so that four-byte characters are counted right.\n",
]
_REPLY_TEXT = (
    "## Review\n\nThe draft reads well; a few **suggestions** follow, with `inline code`.\n\n"
    "- Tighten the opening paragraph.\n- Prefer *active* voice — c'est plus clair.\n"
    "- 要点を最初に書いてください。\n\n```python\ndef greet(name: str) -> str:\n"
    '    return f"Hello, {name}!"\n```\n\n'
)


def long_message(number: int) -> str:
    """A message of ``MESSAGE_CHARS`` characters: odd turns mostly ASCII, the others French and
    emoji, or (every fourth) Japanese, which alone is larger than a frame."""
    if number % 2:
        texts = _MESSAGE_TEXTS[:1]
    else:
        texts = _MESSAGE_TEXTS[2:3] if number % 4 == 0 else _MESSAGE_TEXTS[1::2]
    head = f"Turn {number} message. "
    body = "".join(texts) * (MESSAGE_CHARS // sum(len(t) for t in texts) + 1)
    return (head + body)[:MESSAGE_CHARS].rstrip() + "."


def long_reply(number: int) -> str:
    """A markdown reply of about ``REPLY_TOKENS`` tokens, with code blocks and non-ASCII."""
    head = f"Reply {number}. "
    return (head + _REPLY_TEXT * (REPLY_CHARS // len(_REPLY_TEXT) + 1))[:REPLY_CHARS].rstrip() + "\nEnd."
