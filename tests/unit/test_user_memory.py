"""Long-term user memory, the pure parts: merging a session's fact changes, the userMemory
frames, and the long-term facts' place in the context and the budget."""

from __future__ import annotations

import json

from chatmemory.config import MemorySettings
from chatmemory.memory.context import USER_FACTS_INTRO, plan_context
from chatmemory.memory.state import Fact, FactChange, MemoryState
from chatmemory.memory.strategies import STRATEGIES
from chatmemory.memory.tokens import TokenEstimator
from chatmemory.protocol import MAX_FRAME_BYTES, encode, parse_client_frame, user_memory_frames
from chatmemory.storage.user_memory import (
    UserFact,
    eligible,
    merge_user_facts,
    user_key,
    user_partition,
)

SYSTEM = "You are a helpful assistant."


def test_the_layout_is_the_agreed_one() -> None:
    # deleteMyData erases exactly this partition and this key for a principal
    assert user_partition("guest:abc") == "user#guest:abc"
    assert user_key("user:sub-1") == "user:{user:sub-1}:memory"


def test_only_identified_principals_may_keep_memory() -> None:
    assert eligible("user:sub-1") and eligible("guest:abc")
    assert not eligible("anonymous") and not eligible(None) and not eligible("")


def test_a_key_is_superseded_retracted_and_the_oldest_go_past_the_limit() -> None:
    kept = merge_user_facts([], [FactChange(key="Name", value="Ada")], "s-1", 2, at=10, limit=3)
    kept = merge_user_facts(kept, [FactChange(key="name", value="Ada  Lovelace")], "s-2", 4, at=20, limit=3)
    assert [(f.key, f.value, f.session_id) for f in kept] == [("name", "Ada Lovelace", "s-2")]
    kept = merge_user_facts(
        kept,
        [FactChange(key=k, value=k.upper()) for k in ("a", "b", "c")] + [FactChange(key="name", value=None)],
        "s-3",
        6,
        at=30,
        limit=3,
    )
    assert sorted(f.key for f in kept) == ["a", "b", "c"]
    kept = merge_user_facts(kept, [FactChange(key="d", value="D")], "s-4", 8, at=40, limit=3)
    assert len(kept) == 3 and "d" in {f.key for f in kept}


def test_user_memory_frames_stay_under_32_kb_and_reassemble() -> None:
    facts = [
        UserFact(key=f"topic {i}", value="é" * 400, session_id="s", turn=i, at=i).frame() for i in range(60)
    ]
    frames = user_memory_frames(True, facts, exported_at=5)
    assert len(frames) > 1
    assert all(len(encode(f)) <= MAX_FRAME_BYTES for f in frames)
    assert [f["part"] for f in frames] == list(range(1, len(frames) + 1))
    assert [fact for f in frames for fact in f["facts"]] == facts
    (empty,) = user_memory_frames(False, [], exported_at=5)
    assert empty == {
        "type": "userMemory",
        "longTerm": False,
        "exportedAt": 5,
        "part": 1,
        "parts": 1,
        "facts": [],
    }


def test_the_new_frames_parse() -> None:
    frame = parse_client_frame(
        json.dumps({"action": "setMemory", "memoryStrategy": "window", "longTerm": True})
    )
    assert frame.model_dump(by_alias=True) == {
        "action": "setMemory",
        "memoryStrategy": "window",
        "longTerm": True,
    }
    frame = parse_client_frame(json.dumps({"action": "forgetUserMemory", "key": "name"}))
    assert frame.model_dump() == {"action": "forgetUserMemory", "key": "name"}


def test_long_term_facts_are_counted_and_the_sessions_own_facts_win() -> None:
    settings = MemorySettings(history_turns=4, block_turns=3, budget_tokens=4_000)
    state = MemoryState(facts=[Fact(key="name", value="Ada Lovelace", turn=3)], summarized_through=3)
    carried = [Fact(key="name", value="Ada", turn=0), Fact(key="city", value="London", turn=0)]
    plan = plan_context(
        STRATEGIES["hybrid"], state, [], SYSTEM, "hello", settings, TokenEstimator(4.0), carried
    )
    assert [f.key for f in plan.user_facts] == ["city"]
    assert plan.budget.user_facts > 0 and plan.budget.frame()["userFacts"] == plan.budget.user_facts
    prompt = plan.prompt(SYSTEM, "hello", 100)
    assert "<user-facts>\n- city: London\n</user-facts>" in prompt.system
    assert prompt.system.index("<user-facts>") < prompt.system.index("<facts>")
    assert plan.budget.total <= settings.budget_tokens and not plan.truncated


def test_long_term_facts_that_do_not_fit_are_left_out_and_said() -> None:
    settings = MemorySettings(history_turns=4, block_turns=3, budget_tokens=256)
    carried = [Fact(key=f"k{i}", value="x" * 200, turn=0) for i in range(10)]
    plan = plan_context(
        STRATEGIES["window"], MemoryState(), [], SYSTEM, "hello", settings, TokenEstimator(4.0), carried
    )
    assert plan.user_facts == [] and plan.budget.user_facts == 0 and plan.truncated
    assert USER_FACTS_INTRO.split("\n")[-1] not in plan.prompt(SYSTEM, "hello", 10).system
