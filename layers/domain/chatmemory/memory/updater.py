"""Moving a session's summary and facts forward, after a turn, never during one.

Idempotent: it reads the stored state, works out how far the summary should reach, and stores
the result with a conditional update that only succeeds if no one got there first. Running it
twice, or twice at once, stores one result. If it fails, nothing changes and the next turn,
seeing the summary still behind, schedules it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aws_lambda_powertools.metrics import MetricUnit

from chatmemory.config import MemorySettings
from chatmemory.llm.base import ChatModel
from chatmemory.memory import tasks
from chatmemory.memory.longterm import UserMemoryRepository, eligible
from chatmemory.memory.repository import MemoryStateRepository
from chatmemory.memory.state import MemoryState, merge_facts
from chatmemory.memory.strategies import summary_target
from chatmemory.observability import logger, metrics
from chatmemory.store import TurnStore


@dataclass
class MemoryUpdater:
    repository: MemoryStateRepository
    store: TurnStore
    model: Callable[[], ChatModel]  # built on first use, like the conversation's
    settings: MemorySettings
    users: UserMemoryRepository | None = None  # long-term memory of principals who opted in

    def update(self, session_id: str) -> bool:
        """Bring the session's summary and facts up to date; True if a new state was stored."""
        state = self.repository.read_stored(session_id)
        if state is None:
            raise MemoryUnreachable(session_id)
        last = self.repository.breakers.dynamodb.call(self.store.last_turn_number, session_id)
        target = summary_target(state.summarized_through, last, self.settings)
        if target is None:
            return False
        turns = self.repository.breakers.dynamodb.call(
            self.store.turns_between, session_id, state.summarized_through + 1, target
        )
        model = self.model()
        summary, summary_tokens = tasks.summarize(
            model, state.summary, turns, self.settings.summary_max_tokens
        )
        changes = tasks.extract_facts(model, state.facts, turns)
        # The principal's long-term memory first (merged once per block, a no-op unless they
        # opted in): if it fails, the session's state is not advanced and the whole update is
        # retried; if the session's write fails after it, the retry skips the merged block.
        principal = next((t.principal for t in reversed(turns) if t.principal), None)
        if self.users is not None and changes and eligible(principal):
            self.users.merge_session(str(principal), session_id, target, changes)
        updated = MemoryState(
            summary=summary,
            summary_tokens=summary_tokens,
            facts=merge_facts(state.facts, changes, target, self.settings.max_facts),
            summarized_through=target,
            strategy=state.strategy,
        )
        stored = self.repository.advance(session_id, updated)
        logger.info(
            "memory updated" if stored else "memory already up to date",
            extra={"through": target, "facts": len(updated.facts)},
        )
        metrics.add_metric(
            name="MemoryUpdated" if stored else "MemoryUpdateRaced", unit=MetricUnit.Count, value=1
        )
        return stored

    def update_quietly(self, session_id: str) -> None:
        """``update`` for background runs: a failure is logged and counted, never raised."""
        try:
            self.update(session_id)
        except Exception as exc:  # the model, the stores, a bad answer: a background run must not die
            logger.warning(
                "memory update failed; retried after a later turn", extra={"error": type(exc).__name__}
            )
            metrics.add_metric(name="MemoryUpdateFailed", unit=MetricUnit.Count, value=1)


class MemoryUnreachable(Exception):
    """The session's stored memory state could not be read."""
