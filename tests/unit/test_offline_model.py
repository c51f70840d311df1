"""The offline model answers through the anthropic SDK like Claude: replies of realistic
lengths and shapes, usage counted as the API counts it, ``max_tokens`` honoured. Its echo mode
shows the memory it received, for demonstrations."""

from __future__ import annotations

import random
import statistics

import pytest
from chatmemory.config import LlmSettings
from chatmemory.errors import LlmUnavailable
from chatmemory.llm.anthropic_model import build_chat_model
from chatmemory.llm.base import Message, Prompt
from chatmemory.llm.offline import (
    MESSAGE_OVERHEAD,
    compose_echo_reply,
    compose_realistic_reply,
    count_tokens,
    reply_length,
)


def ask(
    messages: list[Message], system: str = "Be brief.", max_tokens: int = 4096, mode: str = "realistic"
) -> tuple[list[str], int, int, bool]:
    settings = LlmSettings(offline_delay_seconds=0, max_retries=0, offline_mode=mode)  # type: ignore[arg-type]
    model = build_chat_model(settings, None)
    with model.stream(Prompt(system=system, messages=messages, max_tokens=max_tokens)) as reply:
        chunks = list(reply.chunks)
    return chunks, reply.usage.input_tokens, reply.usage.output_tokens, reply.truncated


def test_reply_streams_in_chunks_with_usage() -> None:
    chunks, input_tokens, output_tokens, truncated = ask(
        [{"role": "user", "content": "Hello there, how are you today?"}]
    )
    assert len(chunks) > 2
    assert input_tokens > 0 and output_tokens == count_tokens("".join(chunks))
    assert not truncated


def test_reply_lengths_follow_a_long_tailed_distribution() -> None:
    lengths = sorted(reply_length(random.Random(seed)) for seed in range(4000))
    median = statistics.median(lengths)
    over_2000 = sum(n > 2000 for n in lengths) / len(lengths)
    assert 200 <= median <= 500  # most replies: a few hundred tokens
    assert 0.02 <= over_2000 <= 0.10  # and some long ones
    assert lengths[len(lengths) // 10] < 120  # and some short ones


def test_replies_are_markdown_with_code_and_non_ascii_text() -> None:
    replies = [
        compose_realistic_reply(random.Random(seed), "How should I cache reads?") for seed in range(60)
    ]
    assert sum("```" in r for r in replies) > 10
    assert (
        sum(any(line.startswith(("- ", "1. ", "## ", "### ")) for line in r.splitlines()) for r in replies)
        > 10
    )
    assert sum(not r.isascii() for r in replies) > 10


def test_a_long_reply_stops_at_max_tokens_as_the_api_does() -> None:
    question: list[Message] = [{"role": "user", "content": "Explain caching in depth."}]
    full, _, full_tokens, _ = ask(question)
    assert full_tokens > 40
    cut, _, cut_tokens, truncated = ask(question, max_tokens=40)
    assert truncated and cut_tokens <= 40
    assert "".join(full).startswith("".join(cut))


def test_input_tokens_count_each_messages_overhead_and_the_system_prompt() -> None:
    one: list[Message] = [{"role": "user", "content": "hi"}]
    three: list[Message] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "hi"},
    ]
    _, alone, _, _ = ask(one)
    _, more, _, _ = ask(three)
    assert more - alone == 2 * (count_tokens("hi") + MESSAGE_OVERHEAD)
    _, longer_system, _, _ = ask(one, system="Be brief. " * 20)
    assert longer_system - alone == count_tokens("Be brief. " * 20) - count_tokens("Be brief.")


def test_count_tokens_agrees_with_usage() -> None:
    model = build_chat_model(LlmSettings(offline_delay_seconds=0), None)
    prompt = Prompt(
        system="Be brief.", messages=[{"role": "user", "content": "Grüße aus Zürich 👋"}], max_tokens=50
    )
    with model.stream(prompt) as reply:
        list(reply.chunks)
    assert model.count_tokens(prompt) == reply.usage.input_tokens


def test_replies_never_repeat_what_the_user_said_earlier() -> None:
    planted = "My name is Zebulon Quartermaine and my deadline is 17 Brumaire."
    for question in ("What is my name?", "When is my deadline?", "Remind me what I told you."):
        chunks, _, _, _ = ask(
            [
                {"role": "user", "content": planted},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": question},
            ]
        )
        reply = "".join(chunks)
        assert "Zebulon" not in reply and "Quartermaine" not in reply and "Brumaire" not in reply


def test_is_deterministic() -> None:
    messages: list[Message] = [{"role": "user", "content": "same"}]
    assert ask(messages)[0] == ask(messages)[0]
    assert ask([{"role": "user", "content": "other"}])[0] != ask(messages)[0]


@pytest.mark.parametrize(("directive", "words"), [("429", "too many requests"), ("529", "overloaded")])
def test_can_be_told_to_fail(directive: str, words: str) -> None:
    with pytest.raises(LlmUnavailable, match=words):
        ask([{"role": "user", "content": f"hi [offline:{directive}]"}])


def test_echo_mode_says_what_memory_it_got() -> None:
    chunks, _, _, _ = ask([{"role": "user", "content": "Hello there"}], mode="echo")
    assert "".join(chunks).startswith("[offline model] I see no earlier turns")


def test_echo_mode_quotes_earlier_user_messages_shortened() -> None:
    long = "I would like a recommendation for a dark fantasy manga that suits a complete beginner"
    text = compose_echo_reply(
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


def test_echo_mode_names_summary_and_facts_when_the_prompt_has_them() -> None:
    text = compose_echo_reply("<summary>x</summary><facts>y</facts>", [{"role": "user", "content": "hi"}])
    assert "(summary and facts)" in text
