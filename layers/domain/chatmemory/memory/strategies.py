"""Memory strategies: what each one wants in the context. ``context.plan_context`` then fits
what they want into the token budget, the same way for all of them.

* ``window``: the last N turns.
* ``token_budget``: as many recent turns as the budget holds.
* ``summary``: a running summary of older turns, then every turn it does not cover yet.
* ``facts``: durable facts the user stated, then every turn they do not cover yet.
* ``hybrid``: summary and facts, the earlier turns most relevant to the message (retrieval),
  then the newest turns the summary does not cover yet.
* ``retrieval``: the earlier turns most relevant to the message, then the newest turns.

With retrieval (``chatmemory.memory.retrieval``) every earlier turn can come back, whatever
the window: the newest turns get a share of the room, the retrieved ones the rest.

The last three keep the turns after ``summarized_through`` verbatim. That cursor moves in
whole blocks (``block_turns``), so the prompt's prefix stays byte-identical between the
moments it moves: that is what lets the model's prompt cache serve it.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatmemory.config import MemorySettings, StrategyName
from chatmemory.memory.state import MemoryState
from chatmemory.turns import Turn


@dataclass(frozen=True)
class Wants:
    summary: bool
    facts: bool
    turns: list[Turn]  # oldest first; all of them if the budget allows
    anchor: int  # turn numbers where a block starts: anchor, anchor + block_turns, ...
    missing: bool  # turns it wants are no longer loaded (a late summary): memory is short


@dataclass(frozen=True)
class Strategy:
    name: StrategyName
    summary: bool = False
    facts: bool = False
    cursor: bool = False  # keeps a summary/facts cursor, which the updater must move
    retrieve: bool = False  # searches every earlier turn for the message

    def wants(self, state: MemoryState, turns: list[Turn], settings: MemorySettings) -> Wants:
        answered = [t for t in turns if t.answered]
        if self.name == "window":
            return Wants(False, False, answered[-settings.history_turns :], 1, missing=False)
        if self.name in ("token_budget", "retrieval"):
            return Wants(False, False, answered, 1, missing=False)
        through = state.summarized_through
        # Turns after the cursor that fell out of the loaded window are in neither the summary
        # nor the prompt: the summary is late. Said in the notice, and the updater catches up.
        missing = bool(turns) and turns[0].turn > through + 1
        return Wants(
            self.summary and bool(state.summary),
            self.facts and bool(state.facts),
            [t for t in answered if t.turn > through],
            through + 1,
            missing,
        )


STRATEGIES: dict[StrategyName, Strategy] = {
    "window": Strategy("window"),
    "token_budget": Strategy("token_budget"),
    "summary": Strategy("summary", summary=True, cursor=True),
    "facts": Strategy("facts", facts=True, cursor=True),
    "hybrid": Strategy("hybrid", summary=True, facts=True, cursor=True, retrieve=True),
    "retrieval": Strategy("retrieval", retrieve=True),
}


def strategy_for(state: MemoryState, settings: MemorySettings) -> Strategy:
    """The session's own strategy if it has one, else the deployment's."""
    return STRATEGIES[state.strategy or settings.strategy]


def summary_target(summarized_through: int, last_turn: int, settings: MemorySettings) -> int | None:
    """How far the summary should reach once ``last_turn`` is stored, or ``None`` if it is
    where it should be. It keeps at least ``history_turns`` recent turns out of the summary and
    moves in whole blocks, so it moves once per ``block_turns`` turns."""
    behind = last_turn - summarized_through - settings.history_turns
    if behind < settings.block_turns:
        return None
    return summarized_through + settings.block_turns * (behind // settings.block_turns)
