"""What a session remembers beyond its turns: a running summary and durable facts, how far
they reach (``summarized_through``) and the session's own strategy, if it has one."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from pydantic import BaseModel, Field

from chatmemory.config import StrategyName

_KEY_SPACES = re.compile(r"[^a-z0-9]+")


class Fact(BaseModel):
    key: str  # what it is about ("name", "deadline"): a new value for a key supersedes the old
    value: str
    turn: int  # the turn up to which it was learnt


class FactChange(BaseModel):
    """One change the model reports: a value for a key, or ``None`` when the user retracted it."""

    key: str = Field(min_length=1, max_length=80)
    value: str | None = Field(None, max_length=400)


class MemoryState(BaseModel):
    summary: str = ""
    summary_tokens: int = 0  # as the model reported them when it wrote the summary
    facts: list[Fact] = Field(default_factory=list)
    summarized_through: int = 0  # summary and facts cover turns 1..summarized_through
    strategy: StrategyName | None = None  # the session's override of the deployment's strategy
    version: int = 0  # the meta item's, raised by every write (``chatmemory.storage.cached_copy``)
    turns_expire_at: int = 0  # when the session's oldest turn expires, as last noted (0: not yet)
    update_failures: int = 0  # summary updates failed in a row (``MemoryUpdater``'s backoff)
    update_retry_at: int = 0  # no summary update is tried before then


def normalize_key(key: str) -> str:
    return _KEY_SPACES.sub(" ", key.lower()).strip()


class _Keyed(Protocol):
    key: str


K = TypeVar("K", bound=_Keyed)


def apply_fact_changes(
    current: Iterable[K], changes: Iterable[FactChange], make: Callable[[str, str], K]
) -> list[K]:
    """Changes by key: a known key is superseded (never duplicated) by ``make(key, value)``,
    ``None`` or blank removes it."""
    by_key = {normalize_key(f.key): f for f in current}
    for change in changes:
        key = normalize_key(change.key)
        if not key:
            continue
        if change.value is None or not change.value.strip():
            by_key.pop(key, None)
        else:
            by_key[key] = make(key, " ".join(change.value.split()))
    return list(by_key.values())


def merge_facts(current: list[Fact], changes: list[FactChange], turn: int, limit: int) -> list[Fact]:
    """Apply changes by key; past ``limit`` the least recently learnt facts go first."""
    facts = apply_fact_changes(current, changes, lambda key, value: Fact(key=key, value=value, turn=turn))
    kept = sorted(facts, key=lambda f: f.turn)[-limit:]
    return sorted(kept, key=lambda f: (f.turn, f.key))


def render_facts(facts: list[Fact]) -> str:
    return "\n".join(f"- {f.key}: {f.value}" for f in facts)
