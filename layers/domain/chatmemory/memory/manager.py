"""Memory on the hot path of a turn: refuse a message the budget cannot hold, plan the context
with the session's strategy, account for tokens, and ask for the summary to move on after."""

from __future__ import annotations

from dataclasses import dataclass

from aws_lambda_powertools.metrics import MetricUnit

from chatmemory.config import MemorySettings, StrategyName
from chatmemory.errors import ChatError, ErrorCode
from chatmemory.history import StartedTurn
from chatmemory.llm.base import Prompt
from chatmemory.memory import tasks
from chatmemory.memory.context import ContextPlan, message_tokens, plan_context
from chatmemory.memory.crosssession import Across, CrossSession, interleave
from chatmemory.memory.retrieval import QueriesAhead, Recall, Recalled, retrieval_queries
from chatmemory.memory.scheduler import UpdateScheduler
from chatmemory.memory.state import MemoryState
from chatmemory.memory.strategies import STRATEGIES, Strategy, strategy_for, summary_target
from chatmemory.memory.tokens import TokenEstimator
from chatmemory.observability import logger, metrics
from chatmemory.storage.memory_state import MemoryStateRepository
from chatmemory.storage.user_memory import UserMemory, UserMemoryRepository, eligible
from chatmemory.turns import Usage


class MessageOverBudget(ChatError):
    code = ErrorCode.MESSAGE_TOO_LARGE

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(
            f"The message is about {tokens:,} tokens, more than the {limit:,} a request may use. "
            "Please shorten it or split it into several messages."
        )


@dataclass(frozen=True)
class TurnContext:
    strategy: Strategy
    state: MemoryState
    plan: ContextPlan
    prompt: Prompt
    user_memory: UserMemory | None = None  # the principal's long-term memory, as read for the turn
    across: Across | None = None  # the search of the principal's other sessions, when it ran


class MemoryManager:
    def __init__(
        self,
        settings: MemorySettings,
        estimator: TokenEstimator,
        repository: MemoryStateRepository | None = None,
        scheduler: UpdateScheduler | None = None,
        users: UserMemoryRepository | None = None,
        recall: Recall | None = None,
        cross_session: CrossSession | None = None,
    ) -> None:
        self._settings, self._estimator = settings, estimator
        self._repository, self._scheduler = repository, scheduler
        self._users, self._recall = users, recall
        self._cross_session = cross_session

    @property
    def estimator(self) -> TokenEstimator:
        return self._estimator

    def check_message(self, system: str, message: str) -> None:
        """Refuse, before anything is stored or sent, a message that cannot fit any request."""
        needed = message_tokens(system, message, self._estimator)
        if needed > self._settings.budget_tokens:
            raise MessageOverBudget(needed - self._estimator.estimate(system), self._settings.budget_tokens)

    def embed_ahead(self, message: str) -> QueriesAhead:
        """Start the message's query embedding, when the deployment's strategy searches, so
        that it runs while the turn is persisted and its memory read (hand it to ``prepare``)."""
        if self._recall is None or not STRATEGIES[self._settings.strategy].retrieve:
            return {}
        started = self._recall.embed_ahead(message)
        return {message: started} if started is not None else {}

    def prepare(
        self,
        started: StartedTurn,
        system: str,
        message: str,
        max_tokens: int,
        ahead: QueriesAhead | None = None,
    ) -> TurnContext:
        state = self._state(started)
        strategy = strategy_for(state, self._settings)
        user_memory = self._user_memory(started)
        # Not the facts learnt from this session: its own turns hold them, and leaving them out
        # keeps the prompt's prefix unchanged when a merge adds them while the user talks.
        session_id = started.turn.session_id
        user_facts = [
            f.as_fact()
            for f in (user_memory.active_facts if user_memory is not None else [])
            if f.session_id != session_id
        ]
        recalled = self._search(started, strategy, message, ahead or {})
        across = self._search_across(started, recalled, user_memory, message)
        if recalled is not None and across is not None:
            recalled = Recalled(interleave(recalled.candidates, across.turns), recalled.mode)
        plan = plan_context(
            strategy,
            state,
            started.history.turns,
            system,
            message,
            self._settings,
            self._estimator,
            user_facts,
            recalled.candidates if recalled is not None else None,
            recalled.mode if recalled is not None else "off",
            session_id=session_id,
        )
        for part, tokens in plan.budget.frame().items():
            if part != "limit":  # BudgetSystemTokens, BudgetUserFactsTokens, ...
                name = f"Budget{part[0].upper()}{part[1:]}Tokens"
                metrics.add_metric(name=name, unit=MetricUnit.Count, value=tokens)
        if plan.truncated:
            metrics.add_metric(name="MemoryTruncated", unit=MetricUnit.Count, value=1)
        return TurnContext(
            strategy, state, plan, plan.prompt(system, message, max_tokens), user_memory, across
        )

    def account(self, context: TurnContext, message: str, usage: Usage) -> int:
        """Calibrate the estimator with the model's count, and return the message's tokens: its
        estimate corrected by how this request's estimate compared with that count."""
        budget = context.plan.budget
        # The turns' texts (history and retrieved) are at the model's own counts: only the rest,
        # estimated, is compared. Leaving the retrieved turns in would drown the estimate's
        # error in counts that are already right; subtracting the history's framing too would
        # count it as text the model did not see.
        estimated = budget.total - budget.stored
        reported = usage.prompt_tokens - budget.stored
        own = self._estimator.estimate(message)
        if estimated <= 0 or reported <= 0:
            return own
        # How far the budget's count of this request (stored turns at the model's own counts,
        # new text estimated) was from the model's, before the estimator learns from it: what an
        # operator reads to trust the budget (or tune MEMORY__CHARS_PER_TOKEN).
        error = 100 * (budget.total - usage.prompt_tokens) / usage.prompt_tokens
        metrics.add_metric(name="TokenEstimateErrorPercent", unit=MetricUnit.Percent, value=round(error, 2))
        logger.info(
            "token estimate against the model's count",
            extra={
                "estimated": budget.total,
                "reported": usage.prompt_tokens,
                "error_percent": round(error, 2),
                "estimator_scale": round(self._estimator.scale, 3),
            },
        )
        self._estimator.observe(estimated, reported)
        return max(1, round(own * reported / estimated))

    def after_turn(self, started: StartedTurn, context: TurnContext, expiry_due: bool = False) -> None:
        """Schedule a memory update when the session's summary and facts are a block behind, or
        when the principal opted in to long-term memory and this turn states a fact or their
        memory is ``long_term_every_turns`` behind the session, or when the session's turns are
        to be kept alive (``expiry_due``); the reply has been sent by now. An earlier failed
        update is retried the same way."""
        if self._scheduler is None or not started.persisted:
            return
        turn = started.turn.turn
        session_due = context.strategy.cursor and (
            summary_target(context.state.summarized_through, turn, self._settings) is not None
        )
        memory = context.user_memory
        long_term_due = (
            memory is not None
            and memory.long_term
            and turn > memory.cursor(started.turn.session_id)
            and (
                turn - memory.cursor(started.turn.session_id) >= self._settings.long_term_every_turns
                or tasks.states_fact(started.turn.user)
            )
        )
        if session_due or long_term_due or expiry_due or context.strategy.retrieve:  # retrieval: embed it
            self._scheduler.schedule(started.turn.session_id)

    def _search(
        self, started: StartedTurn, strategy: Strategy, message: str, ahead: QueriesAhead
    ) -> Recalled | None:
        """Retrieval's candidates for the message; ``None`` when the strategy does not search."""
        if not strategy.retrieve or self._recall is None:
            return None
        if started.history.mode == "stateless":
            return Recalled()
        queries = retrieval_queries(message, started.history.turns, self._settings.retrieval_resolve_query)
        recalled = self._recall.search(started.turn.session_id, queries, {started.turn.turn}, ahead)
        metrics.add_metric(name=f"Retrieval_{recalled.mode}", unit=MetricUnit.Count, value=1)
        return recalled

    def _search_across(
        self, started: StartedTurn, recalled: Recalled | None, memory: UserMemory | None, message: str
    ) -> Across | None:
        """The principal's other sessions, searched for the message when the strategy searches
        and they opted in (read for this very turn: an opt-out stops it at once)."""
        if self._cross_session is None or recalled is None or memory is None or not memory.long_term:
            return None
        principal = started.turn.principal
        if principal is None or started.history.mode == "stateless":
            return None
        across = self._cross_session.search(str(principal), memory, started.turn.session_id, message)
        if across is not None:
            metrics.add_metric(name=f"CrossSession_{across.mode}", unit=MetricUnit.Count, value=1)
        return across

    def set_strategy(self, session_id: str, strategy: StrategyName) -> None:
        """Give one session its own strategy (from its next turn), whatever the deployment's."""
        if self._repository is None:
            raise RuntimeError("no memory state store is configured")
        self._repository.set_strategy(session_id, strategy)

    def _user_memory(self, started: StartedTurn) -> UserMemory | None:
        """The principal's long-term memory (its facts count only when they opted in); none
        when it cannot be read (the turn never waits on it)."""
        principal = started.turn.principal
        if self._users is None or started.history.mode == "stateless" or not eligible(principal):
            return None
        return self._users.read(str(principal))

    def _state(self, started: StartedTurn) -> MemoryState:
        if self._repository is None or started.history.mode == "stateless":
            return MemoryState()
        return self._repository.get(started.turn.session_id) or MemoryState()
