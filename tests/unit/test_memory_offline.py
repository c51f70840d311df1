"""The offline model's memory tasks and its simulated prompt cache, through the SDK."""

from __future__ import annotations

from chatmemory.config import LlmSettings
from chatmemory.llm.anthropic_model import build_chat_model
from chatmemory.llm.base import Prompt
from chatmemory.memory import tasks
from chatmemory.memory.state import Fact
from chatmemory.turns import Turn


def model():  # type: ignore[no-untyped-def]
    return build_chat_model(LlmSettings(provider="offline", offline_delay_seconds=0), None)


def turn(n: int, user: str) -> Turn:
    return Turn(session_id="s", turn=n, user=user, assistant="ok", status="complete", at=0, expires_at=1)


def test_facts_are_extracted_from_what_the_user_states() -> None:
    said = [
        turn(1, "Hi! My name is Ada Lovelace."),
        turn(2, "What is the capital of France?"),
        turn(3, "I prefer green tea over coffee. My deadline is 14 March."),
        turn(4, "I decided to use PostgreSQL for the store"),
    ]
    changes = {c.key: c.value for c in tasks.extract_facts(model(), [], said)}
    assert changes["name"] == "Ada Lovelace"
    assert changes["preference"] == "green tea over coffee"
    assert changes["deadline"] == "14 March"
    assert changes["decision"] == "use PostgreSQL for the store"


def test_the_summary_keeps_the_earlier_one_and_adds_first_person_statements() -> None:
    summary, tokens = tasks.summarize(
        model(),
        "- The user said: My name is Ada.",
        [turn(5, "Tell me about Rome."), turn(6, "I live in Lyon.")],
        400,
    )
    assert summary.splitlines() == ["- The user said: My name is Ada.", "- The user said: I live in Lyon."]
    assert tokens > 0


def test_chat_replies_are_unchanged_by_the_task_support() -> None:
    prompt = Prompt(
        system="<summary>x</summary>", messages=[{"role": "user", "content": "hi"}], max_tokens=50
    )
    text, _ = tasks.complete(model(), prompt)
    assert "(summary and facts)" not in text and "(summary)" in text


def test_the_same_prefix_is_read_from_the_simulated_cache() -> None:
    chat = model()
    system = "You are helpful. " * 50
    first = Prompt(
        system=system, messages=[{"role": "user", "content": "one"}], max_tokens=50, cache_after=-1
    )
    _, usage1 = tasks.complete(chat, first)
    assert usage1.cache_read_input_tokens == 0 and usage1.cache_creation_input_tokens > 0

    second = Prompt(
        system=system,
        messages=[
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "two"},
        ],
        max_tokens=50,
        cache_after=1,
    )
    _, usage2 = tasks.complete(chat, second)
    assert usage2.cache_read_input_tokens == usage1.cache_creation_input_tokens
    assert usage2.cache_creation_input_tokens > 0  # "one" and "reply" were written
    assert usage2.prompt_tokens >= usage2.cache_read_input_tokens + usage2.input_tokens

    changed = Prompt(system=system + "!", messages=second.messages, max_tokens=50, cache_after=1)
    _, usage3 = tasks.complete(chat, changed)
    assert usage3.cache_read_input_tokens == 0


def test_no_breakpoint_no_cache() -> None:
    _, usage = tasks.complete(
        model(), Prompt(system="s", messages=[{"role": "user", "content": "x"}], max_tokens=9)
    )
    assert usage.cache_read_input_tokens == usage.cache_creation_input_tokens == 0


def test_facts_already_known_are_shown_to_the_model() -> None:
    changes = tasks.extract_facts(
        model(), [Fact(key="name", value="Ada", turn=1)], [turn(2, "Call me Grace")]
    )
    assert [(c.key, c.value) for c in changes] == [("name", "Grace")]
