"""Fitting what a strategy wants into the token budget, and the prompt that results.

The prompt is ordered stable first: system prompt, the user's long-term facts (when they
opted in), summary, facts, then the turns, oldest first, then the new message. The cache
breakpoint goes on the last block before the new message, so the next turn's request finds
all of it in the model's prompt cache. Retrieved turns change with every message, so they
open the new message's own block (dated, both sides, oldest first) and never break that prefix.
Consecutive retrieved turns of one day share one header: what answers a question is often said
across neighbouring turns, and a header per turn would spend the budget on markup.
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
RETRIEVAL_MARGIN = 0.03  # of the limit, left unfilled by retrieved turns
RECALLED_RUN = "[{}]\n{}"  # the day, then the run's turns (their numbers are in done.retrievedTurns)
RECALLED_TURN = "User: {}\nAssistant: {}"
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
    # Of the above, the turns' texts at the model's own counts (the rest is estimated): what
    # calibration leaves out. Not part of the frame.
    stored: int = 0

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
            "\n\n".join(
                RECALLED_RUN.format(
                    day(run[0].at),
                    "\n\n".join(RECALLED_TURN.format(t.user, t.assistant or "") for t in run),
                )
                for run in runs(sorted(mine, key=lambda t: t.turn))
            )
        )
    return text


def runs(turns: list[Turn]) -> list[list[Turn]]:
    """``turns`` (by number) in runs of consecutive numbers said the same day."""
    grouped: list[list[Turn]] = []
    for turn in turns:
        last = grouped[-1][-1] if grouped else None
        if last is not None and turn.turn == last.turn + 1 and day(turn.at) == day(last.at):
            grouped[-1].append(turn)
        else:
            grouped.append([turn])
    return grouped


def blank(turn: Turn) -> Turn:
    """``turn`` without its texts: rendered, what the block adds around them (the markup)."""
    return turn.model_copy(update={"user": "", "assistant": ""})


def own(turn: Turn, session_id: str | None) -> bool:
    return session_id is None or turn.session_id == session_id


@functools.lru_cache(maxsize=8_192)  # the same turns come back turn after turn
def when(at: int) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%d %B %Y, %H:%M")


@functools.lru_cache(maxsize=8_192)
def day(at: int) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%-d %B %Y")


def text_tokens(turn: Turn, estimator: TokenEstimator) -> int:
    """A turn's two texts at the model's counts (where it reported them), without any framing."""
    return estimator.turn_tokens(turn) - 2 * MESSAGE_OVERHEAD


def recalled_cost(
    turn: Turn, estimator: TokenEstimator, session_id: str | None = None, opens_run: bool = True
) -> int:
    """An upper bound of what a retrieved turn adds to the prompt: its text at the model's
    counts, its markup, and a header when it opens a run. ``recalled_markup`` then counts the
    block's markup exactly (the estimate rounds up per piece here, once for the block there)."""
    if not own(turn, session_id):
        label = ACROSS_TURN.format(turn.session_id[:8], when(turn.at), "", "") + "\n\n"
    else:
        label = RECALLED_TURN.format("", "") + "\n\n"
        if opens_run:
            label += RECALLED_RUN.format(day(turn.at), "") + "\n\n"
    return text_tokens(turn, estimator) + estimator.estimate(label)


def recalled_markup(turns: list[Turn], estimator: TokenEstimator, session_id: str | None) -> int:
    """The estimate of everything the retrieved block adds around the turns' texts."""
    return estimator.estimate(recalled_block([blank(t) for t in turns], session_id))


def adjoins(turn: Turn, chosen: set[tuple[str, int, str]]) -> bool:
    """Whether ``turn`` continues a run of those chosen (the number before or after, same day)."""
    return any((turn.session_id, turn.turn + step, day(turn.at)) in chosen for step in (-1, 1))


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

    With ``recalled`` (retrieval's candidates, best first), when the wanted turns and the
    candidates do not all fit, the newest ``retrieval_recent_turns`` stay as messages, the
    summary gives way when the memory blocks would pass ``retrieval_memory_share`` of the
    budget, and the best candidates that fit take the rest: turns left out, and those the
    summary covers, are then searched, not lost, and only a failed search counts as
    truncation."""
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

    searching = recalled is not None and recall != "unavailable"
    wanted_tokens = sum(estimator.turn_tokens(t) for t in wants.turns)
    summary = state.summary if wants.summary else None
    summary_tokens = 0
    if summary:
        summary_tokens = estimator.estimate(SUMMARY_INTRO.format("")) + (
            state.summary_tokens or estimator.estimate(summary)
        )
    # Crowded: the wanted turns and every candidate do not all fit. Then the search decides
    # what comes back, and what it leaves out is searched, not lost.
    crowded = (
        searching
        and summary_tokens + wanted_tokens + extra_cost(recalled or [], wants.turns, estimator) > room
    )
    if summary:
        memory = facts_tokens + carried_tokens + summary_tokens
        if crowded and memory > settings.retrieval_memory_share * limit:
            summary, summary_tokens = None, 0  # its turns are searched: they are worth more verbatim
        elif summary_tokens > room:
            summary, summary_tokens, truncated = None, 0, True
    room -= summary_tokens

    if crowded:
        # The newest turns stay as messages (what "it" and "that" refer to), the rest is searched.
        recent = wants.turns[max(len(wants.turns) - settings.retrieval_recent_turns, 0) :]
        kept = fit_turns(recent, room, recent[0].turn, 1, estimator) if recent else []
    else:
        kept = fit_turns(wants.turns, room, wants.anchor, settings.block_turns, estimator)
    history_tokens = sum(estimator.turn_tokens(t) for t in kept)
    if not searching:
        truncated = truncated or len(kept) < len(wants.turns)
    # Retrieval fills what is left to the brim, so the estimates' error (about 1% once
    # calibrated, more before) would overflow the limit: it stops a margin short.
    room_for_search = room - history_tokens - round(RETRIEVAL_MARGIN * limit)
    chosen = choose_recalled(recalled or [], kept, room_for_search, estimator, session_id)
    # What the block costs: the turns' texts at the model's counts, its markup estimated whole.
    retrieved_tokens = (
        sum(text_tokens(t, estimator) for t in chosen) + recalled_markup(chosen, estimator, session_id)
        if chosen
        else 0
    )
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
        stored=sum(text_tokens(t, estimator) for t in [*kept, *chosen]),
    )
    return ContextPlan(
        strategy.name, summary, facts, kept, budget, truncated, carried, chosen, recall, session_id
    )


def choose_recalled(
    candidates: list[Turn], kept: list[Turn], room: int, estimator: TokenEstimator, session_id: str | None
) -> list[Turn]:
    """The best candidates (best first) that fit ``room`` at their cost's upper bound, those
    already in the prompt left out; in prompt order: other sessions' by date, then by number."""
    chosen: list[Turn] = []
    spent = estimator.estimate(RECALLED_INTRO.format(""))
    in_prompt = {(t.session_id, t.turn) for t in kept}
    placed: set[tuple[str, int, str]] = set()  # the chosen turns: session, number, day
    across_intro = estimator.estimate(ACROSS_INTRO.format(""))  # once, with the first such turn
    for candidate in candidates:
        if (candidate.session_id, candidate.turn) in in_prompt:
            continue
        mine = own(candidate, session_id)
        opens_run = not (mine and adjoins(candidate, placed))
        cost = recalled_cost(candidate, estimator, session_id, opens_run=opens_run)
        if not mine and all(own(c, session_id) for c in chosen):
            cost += across_intro
        if spent + cost <= room:
            chosen.append(candidate)
            placed.add((candidate.session_id, candidate.turn, day(candidate.at)))
            spent += cost
    chosen.sort(key=lambda t: (own(t, session_id), t.at if not own(t, session_id) else 0, t.turn))
    return chosen


def extra_cost(candidates: list[Turn], wanted: list[Turn], estimator: TokenEstimator) -> int:
    """What the candidates that are not wanted anyway would take, at the least (no markup)."""
    wanted_keys = {(t.session_id, t.turn) for t in wanted}
    return sum(text_tokens(t, estimator) for t in candidates if (t.session_id, t.turn) not in wanted_keys)


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
