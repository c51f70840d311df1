"""Fitting what a strategy wants into the token budget, and the prompt that results.

The prompt is ordered stable first: system prompt, the user's long-term facts (when they
opted in), summary, facts, then the turns, oldest first, then the new message. The cache
breakpoint goes on the last block before the new message, so the next turn's request finds
all of it in the model's prompt cache. Retrieved turns change with every message, so they
open the new message's own block (dated, both sides, oldest first) and never break that prefix.
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass, field

from chatmemory.config import MemorySettings
from chatmemory.llm.base import Message, Prompt
from chatmemory.memory.state import Fact, MemoryState, render_facts
from chatmemory.memory.strategies import Strategy, Wants
from chatmemory.memory.tokens import MESSAGE_OVERHEAD, TokenEstimator
from chatmemory.turns import Turn

# The summary and facts go into the system prompt; the offline model and the tests know them
# by these tags.
SUMMARY_INTRO = "\n\nWhat was said earlier in this conversation, summarised:\n<summary>\n{}\n</summary>"
FACTS_INTRO = "\n\nWhat the user has told you about themselves and their work:\n<facts>\n{}\n</facts>"
RECALLED_INTRO = (
    "Earlier in this conversation (retrieved for this message):\n<earlier-turns>\n{}\n</earlier-turns>\n\n"
)
RETRIEVAL_MARGIN = 0.04  # of the limit, left unfilled by retrieved turns
RECALLED_TURN = "[turn {} · {}]\nUser: {}\nAssistant: {}"
# Cross-session retrieval: turns of the user's other conversations, each labelled with its
# conversation (the first characters of its id) and its date.
ACROSS_INTRO = (
    "From the user's earlier conversations (retrieved for this message):\n"
    "<earlier-conversations>\n{}\n</earlier-conversations>\n\n"
)
ACROSS_TURN = "[conversation {} · {}]\nUser: {}\nAssistant: {}"
USER_FACTS_INTRO = (
    "\n\nWhat the user asked you to remember from earlier conversations:\n<user-facts>\n{}\n</user-facts>"
)


@dataclass(frozen=True)
class Budget:
    """Where a request's input tokens go (estimates and stored counts, before the call)."""

    limit: int
    system: int
    summary: int
    facts: int
    history: int
    message: int
    user_facts: int = 0  # the user's long-term facts (opt-in), carried over from other sessions
    retrieved: int = 0  # earlier turns retrieved for this message
    history_turns: int = 0  # how many earlier turns the history carries

    @property
    def total(self) -> int:
        return (
            self.system
            + self.user_facts
            + self.summary
            + self.facts
            + self.history
            + self.retrieved
            + self.message
        )

    def frame(self) -> dict[str, int]:
        return {
            "limit": self.limit,
            "system": self.system,
            "userFacts": self.user_facts,
            "summary": self.summary,
            "facts": self.facts,
            "history": self.history,
            "retrieved": self.retrieved,
            "message": self.message,
            "historyTurns": self.history_turns,
        }


@dataclass(frozen=True)
class ContextPlan:
    strategy: str
    summary: str | None
    facts: list[Fact]
    turns: list[Turn]
    budget: Budget
    truncated: bool
    user_facts: list[Fact] = field(default_factory=list)
    recalled: list[Turn] = field(default_factory=list)  # retrieved earlier turns, oldest first
    recall: str = "off"  # retrieval's mode: off, hybrid, keyword, unavailable
    session_id: str | None = None  # whose turns ``recalled`` holds; others are other sessions'

    def prompt(self, system: str, message: str, max_tokens: int) -> Prompt:
        system_text = system_block(system, self.summary, self.facts, self.user_facts)
        messages: list[Message] = []
        for turn in self.turns:
            messages.append({"role": "user", "content": turn.user})
            messages.append({"role": "assistant", "content": turn.assistant or ""})
        breakpoint_at = len(messages) - 1  # the last turn's reply, or -1: the system prompt
        block = recalled_block(self.recalled, self.session_id)
        messages.append({"role": "user", "content": block + message})
        return Prompt(system=system_text, messages=messages, max_tokens=max_tokens, cache_after=breakpoint_at)


def system_block(
    system: str, summary: str | None, facts: list[Fact], user_facts: list[Fact] | None = None
) -> str:
    text = system
    if user_facts:
        text += USER_FACTS_INTRO.format(render_facts(user_facts))
    if summary:
        text += SUMMARY_INTRO.format(summary)
    if facts:
        text += FACTS_INTRO.format(render_facts(facts))
    return text


def recalled_block(turns: list[Turn], session_id: str | None = None) -> str:
    """The other conversations' turns (oldest first), then this one's (by number)."""
    other = sorted((t for t in turns if not own(t, session_id)), key=lambda t: (t.at, t.turn))
    mine = [t for t in turns if own(t, session_id)]
    text = ""
    if other:
        text += ACROSS_INTRO.format(
            "\n\n".join(
                ACROSS_TURN.format(t.session_id[:8], when(t.at), t.user, t.assistant or "") for t in other
            )
        )
    if mine:
        text += RECALLED_INTRO.format(
            "\n\n".join(RECALLED_TURN.format(t.turn, when(t.at), t.user, t.assistant or "") for t in mine)
        )
    return text


def own(turn: Turn, session_id: str | None) -> bool:
    return session_id is None or turn.session_id == session_id


@functools.lru_cache(maxsize=8_192)  # the same turns come back turn after turn
def when(at: int) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%d %B %Y, %H:%M")


def recalled_cost(turn: Turn, estimator: TokenEstimator, session_id: str | None = None) -> int:
    """A retrieved turn's share of the prompt: its text at the model's counts, and its header."""
    label = RECALLED_TURN.format(turn.turn, when(turn.at), "", "")
    if not own(turn, session_id):
        label = ACROSS_TURN.format(turn.session_id[:8], when(turn.at), "", "")
    header = estimator.estimate(label + "\n\n")
    return estimator.turn_tokens(turn) - 2 * MESSAGE_OVERHEAD + header


def message_tokens(system: str, message: str, estimator: TokenEstimator) -> int:
    """What the smallest possible request costs: the system prompt and the message alone."""
    return estimator.estimate(system) + estimator.estimate(message) + MESSAGE_OVERHEAD


def plan_context(
    strategy: Strategy,
    state: MemoryState,
    turns: list[Turn],
    system: str,
    message: str,
    settings: MemorySettings,
    estimator: TokenEstimator,
    user_facts: list[Fact] | None = None,
    recalled: list[Turn] | None = None,
    recall: str = "off",
    session_id: str | None = None,
) -> ContextPlan:
    """What goes into the request: the system prompt and the message always (the caller has
    refused a message that cannot fit), then facts, then the user's long-term facts (those the
    session's own facts do not supersede), then the summary, then as many of the wanted turns
    as fit, dropped oldest first in whole blocks. ``truncated`` when anything wanted is left
    out.

    With ``recalled`` (retrieval's candidates, best first) the newest turns get only
    ``retrieval_recent_share`` of the room and the best candidates that fit take the rest:
    turns left out are then searched, not lost, and only a failed search counts as truncation."""
    wants: Wants = strategy.wants(state, turns, settings)
    limit = settings.budget_tokens
    system_tokens = estimator.estimate(system)
    message_cost = estimator.estimate(message) + MESSAGE_OVERHEAD
    room = limit - system_tokens - message_cost
    truncated = wants.missing

    facts: list[Fact] = state.facts if wants.facts else []
    facts_tokens = estimator.estimate(FACTS_INTRO.format(render_facts(facts))) if facts else 0
    if facts_tokens > room:
        facts, facts_tokens, truncated = [], 0, True
    room -= facts_tokens

    own_keys = {f.key for f in state.facts}
    carried = [f for f in user_facts or [] if f.key not in own_keys]
    carried_tokens = estimator.estimate(USER_FACTS_INTRO.format(render_facts(carried))) if carried else 0
    if carried_tokens > room:
        carried, carried_tokens, truncated = [], 0, True
    room -= carried_tokens

    summary = state.summary if wants.summary else None
    summary_tokens = 0
    if summary:
        summary_tokens = estimator.estimate(SUMMARY_INTRO.format("")) + (
            state.summary_tokens or estimator.estimate(summary)
        )
        if summary_tokens > room:
            summary, summary_tokens, truncated = None, 0, True
    room -= summary_tokens

    searching = recalled is not None and recall != "unavailable"
    kept = fit_turns(wants.turns, room, wants.anchor, settings.block_turns, estimator)
    if searching and len(kept) < len(wants.turns):
        # Not everything fits: the newest turns keep their share, the search fills the rest.
        recent_room = round(max(room, 0) * settings.retrieval_recent_share)
        kept = fit_turns(wants.turns, recent_room, wants.anchor, settings.block_turns, estimator)
    history_tokens = sum(estimator.turn_tokens(t) for t in kept)
    if not searching:
        truncated = truncated or len(kept) < len(wants.turns)
    chosen: list[Turn] = []
    retrieved_tokens = estimator.estimate(RECALLED_INTRO.format(""))
    # Retrieval fills what is left to the brim, so the estimates' error (about 1% once
    # calibrated, more before) would overflow the limit: it stops a margin short.
    room_for_search = room - round(RETRIEVAL_MARGIN * limit)
    in_prompt = {(t.session_id, t.turn) for t in kept}
    across_intro = estimator.estimate(ACROSS_INTRO.format(""))  # once, with the first such turn
    for candidate in recalled or []:
        if (candidate.session_id, candidate.turn) in in_prompt:
            continue
        cost = recalled_cost(candidate, estimator, session_id)
        if not own(candidate, session_id) and all(own(c, session_id) for c in chosen):
            cost += across_intro
        if history_tokens + retrieved_tokens + cost <= room_for_search:
            chosen.append(candidate)
            retrieved_tokens += cost
    if not chosen:
        retrieved_tokens = 0
    chosen.sort(key=lambda t: (own(t, session_id), t.at if not own(t, session_id) else 0, t.turn))
    budget = Budget(
        limit=limit,
        system=system_tokens,
        summary=summary_tokens,
        facts=facts_tokens,
        history=history_tokens,
        retrieved=retrieved_tokens,
        message=message_cost,
        user_facts=carried_tokens,
        history_turns=len(kept),
    )
    return ContextPlan(
        strategy.name, summary, facts, kept, budget, truncated, carried, chosen, recall, session_id
    )


def fit_turns(
    turns: list[Turn], room: int, anchor: int, block_turns: int, estimator: TokenEstimator
) -> list[Turn]:
    """The longest suffix of ``turns`` that fits ``room`` and starts on a block boundary (so
    consecutive requests drop the same block and share their prefix); when not even the last
    block fits, the longest suffix that does."""
    room = max(room, 0)
    costs = [estimator.turn_tokens(t) for t in turns]
    suffix = [0] * (len(turns) + 1)
    for i in range(len(turns) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + costs[i]
    fitting = [i for i in range(len(turns) + 1) if suffix[i] <= room]
    aligned = [i for i in fitting[:-1] if i == 0 or (turns[i].turn - anchor) % block_turns == 0]
    return turns[aligned[0] if aligned else fitting[0] :]
