"""The offline model's memory tasks and its simulated prompt cache, through the SDK; and the
domain reading the answers the way Claude gives them: inside prose, fenced, cut at
``max_tokens``."""

from __future__ import annotations

import pytest
from chatmemory.config import LlmSettings
from chatmemory.llm.anthropic_model import build_chat_model
from chatmemory.llm.base import Prompt
from chatmemory.memory import tasks
from chatmemory.memory.state import Fact
from chatmemory.turns import Turn


def model(mode: str = "realistic"):  # type: ignore[no-untyped-def]
    settings = LlmSettings(provider="offline", offline_delay_seconds=0, offline_mode=mode)  # type: ignore[arg-type]
    return build_chat_model(settings, None)


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
        "The user said: My name is Ada.",
        [turn(5, "Tell me about Rome."), turn(6, "I live in Lyon.")],
        400,
    )
    assert summary.splitlines()[:2] == ["The user said: My name is Ada.", "The user said: I live in Lyon."]
    assert tokens > 0


def test_chat_replies_are_unchanged_by_the_task_support() -> None:
    prompt = Prompt(
        system="<summary>x</summary>", messages=[{"role": "user", "content": "hi"}], max_tokens=50
    )
    text, _, _ = tasks.complete(model("echo"), prompt)
    assert "(summary and facts)" not in text and "(summary)" in text


def test_the_same_prefix_is_read_from_the_simulated_cache() -> None:
    chat = model()
    system = "You are helpful. " * 50
    first = Prompt(
        system=system, messages=[{"role": "user", "content": "one"}], max_tokens=50, cache_after=-1
    )
    _, usage1, _ = tasks.complete(chat, first)
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
    _, usage2, _ = tasks.complete(chat, second)
    assert usage2.cache_read_input_tokens == usage1.cache_creation_input_tokens
    assert usage2.cache_creation_input_tokens > 0  # "one" and "reply" were written
    assert usage2.prompt_tokens >= usage2.cache_read_input_tokens + usage2.input_tokens

    changed = Prompt(system=system + "!", messages=second.messages, max_tokens=50, cache_after=1)
    _, usage3, _ = tasks.complete(chat, changed)
    assert usage3.cache_read_input_tokens == 0


def test_no_breakpoint_no_cache() -> None:
    _, usage, _ = tasks.complete(
        model(), Prompt(system="s", messages=[{"role": "user", "content": "x"}], max_tokens=9)
    )
    assert usage.cache_read_input_tokens == usage.cache_creation_input_tokens == 0


def test_facts_already_known_are_shown_to_the_model() -> None:
    changes = tasks.extract_facts(
        model(), [Fact(key="name", value="Ada", turn=1)], [turn(2, "Call me Grace")]
    )
    assert [(c.key, c.value) for c in changes] == [("name", "Grace")]


def test_facts_survive_every_shape_of_answer_the_model_gives() -> None:
    # Sixty transcripts: the realistic model answers some bare, some fenced, some inside prose
    # with other brackets, some rambling past max_tokens; each yields the facts stated.
    for n in range(60):
        said = [turn(1, f"Hello number {n}. My name is Ada {n}."), turn(2, f"I prefer tea number {n}.")]
        changes = {c.key: c.value for c in tasks.extract_facts(model(), [], said)}
        assert changes == {"name": f"Ada {n}", "preference": f"tea number {n}"}, n


def test_a_facts_answer_inside_prose_is_read() -> None:
    answer = (
        "Looking at the new turns (an empty list, [], would mean nothing new):\n\n"
        '[{"key": "name", "value": "Ada"}]\n\nI left out small talk [greetings].'
    )
    assert [(c.key, c.value) for c in tasks.parse_changes(answer)] == [("name", "Ada")]
    fenced = 'Here you go:\n```json\n[{"key": "city", "value": "Lyon"}]\n```'
    assert [(c.key, c.value) for c in tasks.parse_changes(fenced)] == [("city", "Lyon")]


def test_a_facts_answer_cut_short_keeps_its_complete_changes() -> None:
    cut = '[{"key": "name", "value": "Ada"}, {"key": "city", "value": "Ly'
    assert [(c.key, c.value) for c in tasks.parse_changes(cut, truncated=True)] == [("name", "Ada")]
    assert tasks.parse_changes("Let me go through the turns one by one. Turn 1: the", truncated=True) == []


def test_a_facts_answer_without_changes_is_refused() -> None:
    with pytest.raises(tasks.MemoryTaskFailed):
        tasks.parse_changes("I could not find anything [sorry].")


def test_a_summary_cut_at_max_tokens_loses_only_its_last_unfinished_line() -> None:
    answer = "Here is the updated summary:\n\nThe user is Ada.\nShe lives in Lyon.\nShe prefers gre"
    assert tasks.summary_of(answer, truncated=True) == "The user is Ada.\nShe lives in Lyon."
    assert tasks.summary_of("The user is Ada. She lives in Ly", truncated=True) == "The user is Ada."
    assert tasks.summary_of("The user is Ad", truncated=True) == ""
    assert tasks.summary_of("Here's the summary:\nThe user is Ada.", truncated=False) == "The user is Ada."


def test_a_summary_over_its_budget_never_stores_a_broken_sentence() -> None:
    # A small budget: the model's summary often overshoots and is cut at max_tokens.
    previous = "The user said: My name is Ada."
    for n in range(30):
        said = [turn(k, f"I live in city {n}-{k}. I work on project {k}.") for k in range(1, 8)]
        try:
            summary, tokens = tasks.summarize(model(), previous, said, 60)
        except tasks.MemoryTaskFailed:
            continue  # nothing usable: the stored summary stays, retried after a later turn
        assert summary and tokens > 0
        assert all(line.rstrip().endswith((".", "!", "?")) for line in summary.splitlines()), summary


# ---- titles ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ("Trip to Lisbon", "Trip to Lisbon"),
        ('Title: "Trip to Lisbon"', "Trip to Lisbon"),
        ("**Trip to Lisbon**", "Trip to Lisbon"),
        ("Trip to Lisbon.", "Trip to Lisbon"),
        ("Here's a title for this conversation:\n\nTrip to Lisbon", "Trip to Lisbon"),
        ("\u201cVoyage \u00e0 Lisbonne\u201d", "Voyage \u00e0 Lisbonne"),
        ("word " * 40, ("word " * 16).strip()),  # at most 80 characters, cut at a word
    ],
)
def test_a_title_is_read_from_the_ways_claude_answers(answer: str, title: str) -> None:
    assert tasks.title_of(answer) == title


def test_the_offline_model_titles_a_conversation_from_its_first_message_whatever_it_dresses() -> None:
    titles = {
        tasks.make_title(model(), [turn(1, f"Planning a trip to Lisbon in May, take {n}")]) for n in range(40)
    }
    assert titles == {"Planning trip lisbon"}  # every dressing taken off (40 seeds)
