"""The offline model answers through the anthropic SDK and shows the memory it received."""

from __future__ import annotations

import pytest
from chatmemory.config import LlmSettings
from chatmemory.errors import LlmUnavailable
from chatmemory.llm.anthropic_model import build_chat_model
from chatmemory.llm.base import Message, Prompt
from chatmemory.llm.offline import compose_reply


def ask(messages: list[Message], system: str = "Be brief.") -> tuple[list[str], int, int]:
    model = build_chat_model(LlmSettings(offline_delay_seconds=0, max_retries=0), None)
    with model.stream(Prompt(system=system, messages=messages, max_tokens=200)) as reply:
        chunks = list(reply.chunks)
    return chunks, reply.usage.input_tokens, reply.usage.output_tokens


def test_reply_streams_in_chunks_with_usage() -> None:
    chunks, input_tokens, output_tokens = ask(
        [{"role": "user", "content": "Hello there, how are you today?"}]
    )
    assert len(chunks) > 2
    assert "".join(chunks).startswith("[offline model] I see no earlier turns")
    assert input_tokens > 0 and output_tokens > 0


def test_reply_quotes_earlier_user_messages_shortened() -> None:
    long = "I would like a recommendation for a dark fantasy manga that suits a complete beginner"
    text = compose_reply(
        "",
        [
            {"role": "user", "content": long},
            {"role": "assistant", "content": "Berserk, Vinland Saga, Claymore"},
            {"role": "user", "content": "What about the second one?"},
        ],
    )
    assert "I see 1 earlier turn (no summary, no facts)." in text
    assert '1. "I would like a recommendation for a dark fantasy manga that…"' in text
    assert 'You just said: "What about the second one?"' in text


def test_reply_names_summary_and_facts_when_the_prompt_has_them() -> None:
    text = compose_reply("<summary>x</summary><facts>y</facts>", [{"role": "user", "content": "hi"}])
    assert "(summary and facts)" in text


def test_is_deterministic() -> None:
    messages: list[Message] = [{"role": "user", "content": "same"}]
    assert ask(messages)[0] == ask(messages)[0]


@pytest.mark.parametrize(("directive", "words"), [("429", "too many requests"), ("529", "overloaded")])
def test_can_be_told_to_fail(directive: str, words: str) -> None:
    with pytest.raises(LlmUnavailable, match=words):
        ask([{"role": "user", "content": f"hi [offline:{directive}]"}])
