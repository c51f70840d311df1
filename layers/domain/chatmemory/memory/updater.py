"""Moving a session's summary and facts forward, after a turn, never during one.

Idempotent: it reads the stored state, works out how far the summary should reach, and stores
the result with a conditional update that only succeeds if no one got there first. Running it
twice, or twice at once, stores one result. If the summary's update fails (the model, an
answer it cannot use), the meta item notes it and when to try again: after ``update_retry_seconds``, doubled
with each failure in a row, so a model that is down is not asked twice on every turn. After
``update_max_attempts`` failures in a row the update is given up (``MemoryUpdateGivenUp``:
the summarize function's invocation fails into its dead-letter queue, which is alarmed) and
waits ``update_parked_seconds`` before it is tried again. The turns themselves are kept; only
the summary and facts of the block lag, and a retrieving strategy still finds them.

Long-term memory has its own cursor, per session, in the principal's memory: the same run
extracts the facts of the turns after it (every few turns, or after a turn that states one),
merges them and moves it, in one conditional write. The session's summary and facts keep their
own cadence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aws_lambda_powertools.metrics import MetricUnit

from chatmemory.config import MemorySettings
from chatmemory.llm.base import ChatModel
from chatmemory.memory import tasks
from chatmemory.memory.crosssession import CrossSession
from chatmemory.memory.retrieval import Recall
from chatmemory.memory.state import FactChange, MemoryState, merge_facts
from chatmemory.memory.strategies import strategy_for, summary_target
from chatmemory.observability import logger, metrics
from chatmemory.storage.memory_state import MemoryStateRepository
from chatmemory.storage.turns import TurnStore
from chatmemory.storage.user_memory import UserMemory, UserMemoryRepository, UserMemoryUnavailable, eligible
from chatmemory.turns import Turn

# A listed session is titled by the first run after its first exchange: after every turn with
# a retrieving strategy (the default), at the first summary or long-term merge otherwise. Past
# this many turns an untitled session stays so (and the listing is not read for it again).
TITLE_WITHIN_TURNS = 50
_MERGE_ATTEMPTS = 3  # a merge that found the memory changed (another run, an erasure) extracts again


@dataclass
class MemoryUpdater:
    repository: MemoryStateRepository
    store: TurnStore
    model: Callable[[], ChatModel]  # built on first use, like the conversation's
    settings: MemorySettings
    users: UserMemoryRepository | None = None  # long-term memory of principals who opted in
    recall: Recall | None = None  # retrieval memory: embeds the turns after their reply
    cross_session: CrossSession | None = None  # indexes opted-in principals' embedded turns
    # Keeps a live session's turns alive (``SessionMemory.keep_alive``): the oldest live turn
    # and its expiry to note, or ``None``.
    keep_alive: Callable[[str, int], tuple[int, int] | None] | None = None
    clock: Callable[[], float] = time.time

    def update(self, session_id: str) -> bool:
        """Bring the session's summary and facts up to date, then the principal's long-term
        memory; True if a new session state was stored. Each part is idempotent. A store that
        fails raises (the next turn schedules the update again); the model's failures back off
        (see the module), and only ``MemoryUpdateGivenUp`` is raised for them."""
        state = self.repository.read_stored(session_id)
        if state is None:
            raise MemoryUnreachable(session_id)
        self._keep_alive(session_id, state)
        last = self.repository.breakers.dynamodb.call(self.store.last_turn_number, session_id)
        stored = False
        strategy = strategy_for(state, self.settings)
        if strategy.retrieve and self.recall is not None and last >= 1:
            recent = self.repository.breakers.dynamodb.call(
                self.store.turns_between, session_id, max(1, last - self.settings.context_turns + 1), last
            )
            self.recall.index(session_id, recent)
            if self.cross_session is not None:
                self.cross_session.index(session_id, recent)
        given_up: MemoryUpdateGivenUp | None = None
        if strategy.cursor:
            try:
                stored = self._update_session_unless_waiting(session_id, state, last)
            except MemoryUpdateGivenUp as exc:
                given_up = exc  # the long-term merge below is a part of its own
        self._remember_unless_failing(session_id, last)
        self._title_unless_titled(session_id, last)
        if given_up is not None:
            raise given_up
        return stored

    def _title_unless_titled(self, session_id: str, last: int) -> None:
        """Name a young listed session after its first exchange, unless it has a name (the
        user's is never replaced). The model failing is logged; a later run tries again."""
        if not 1 <= last <= TITLE_WITHIN_TURNS:
            return
        meta, breakers = self.repository.store, self.repository.breakers
        listing = breakers.listing.attempt(meta.listing, session_id, default=None)
        if listing is None or listing.title:
            return
        first = breakers.dynamodb.call(self.store.turns_between, session_id, 1, 1)
        if not first or not first[0].answered:
            return
        try:
            title = tasks.make_title(self.model(), first)
        except Exception as exc:
            if breakers.dynamodb.is_fault(exc):
                raise
            logger.warning("could not title the session", extra={"error": type(exc).__name__})
            return
        if breakers.listing.attempt(
            meta.set_title, session_id, listing.principal, title, True, default=False
        ):
            metrics.add_metric(name="SessionTitled", unit=MetricUnit.Count, value=1)

    def _remember_unless_failing(self, session_id: str, last: int) -> None:
        """The long-term merge; a failure of the model or of its answer is logged and counted,
        not raised: the merge has its own cadence (``long_term_every_turns``, or a turn that
        states a fact), which retries it, and a raise would dead-letter a passing blip."""
        try:
            self.remember(session_id, last)
        except Exception as exc:
            if self.repository.breakers.dynamodb.is_fault(exc):
                raise
            logger.warning(
                "long-term merge failed; tried again when next due", extra={"error": type(exc).__name__}
            )
            metrics.add_metric(name="UserMemoryMergeFailed", unit=MetricUnit.Count, value=1)

    def _update_session_unless_waiting(self, session_id: str, state: MemoryState, last: int) -> bool:
        now = int(self.clock())
        if state.update_retry_at > now:
            logger.info(
                "summary update waits after failing",
                extra={"failures": state.update_failures, "retry_in": state.update_retry_at - now},
            )
            return False
        try:
            return self._update_session(session_id, state, last)
        except Exception as exc:
            if self.repository.breakers.dynamodb.is_fault(exc):
                raise  # the store failing: a note of it would fail too (and count against its breaker)
            # the model, an answer that cannot be used
            self._note_failure(session_id, state, last, now, exc)
            return False

    def _note_failure(self, session_id: str, state: MemoryState, last: int, now: int, exc: Exception) -> None:
        target = summary_target(state.summarized_through, last, self.settings) or last
        failures = state.update_failures + 1
        given_up = failures >= self.settings.update_max_attempts
        wait = (
            self.settings.update_parked_seconds
            if given_up
            else self.settings.update_retry_seconds * 2 ** (failures - 1)
        )
        try:
            self.repository.note_update_failure(session_id, target, failures, now + wait)
        except Exception as note_exc:  # the stores failing too: the next run tries again
            logger.warning("could not note the failed update", extra={"error": type(note_exc).__name__})
        extra = {"error": type(exc).__name__, "failures": failures, "retry_in": wait, "through": target}
        if given_up:
            logger.error("summary update given up; dead-lettered", extra=extra)
            metrics.add_metric(name="MemoryUpdateGivenUp", unit=MetricUnit.Count, value=1)
            raise MemoryUpdateGivenUp(session_id) from exc
        logger.warning("summary update failed; tried again later", extra=extra)
        metrics.add_metric(name="MemoryUpdateFailed", unit=MetricUnit.Count, value=1)

    def _keep_alive(self, session_id: str, state: MemoryState) -> None:
        if self.keep_alive is None:
            return
        noted = self.keep_alive(session_id, state.turns_expire_at)
        if noted is None or noted[1] == state.turns_expire_at:
            return
        try:
            self.repository.note_turns_expiry(session_id, *noted)
        except Exception as exc:  # the TTLs moved; the note is retried on a later run
            logger.warning("could not note the session's expiry", extra={"error": type(exc).__name__})

    def _update_session(self, session_id: str, state: MemoryState, last: int) -> bool:
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
        changes = self._fact_changes(model, state, turns, target)
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

    @staticmethod
    def _fact_changes(
        model: ChatModel, state: MemoryState, turns: list[Turn], target: int
    ) -> list[FactChange]:
        """The block's fact changes; none when the model's answer holds no list of them (prose,
        a refusal): the summary goes on without them, rather than the whole update failing
        again on every turn after it. A model that cannot be reached fails the update."""
        try:
            return tasks.extract_facts(model, state.facts, turns)
        except tasks.MemoryTaskFailed as exc:
            logger.warning(
                "facts answer unusable; the block's facts are skipped",
                extra={"through": target, "error": str(exc)},
            )
            metrics.add_metric(name="MemoryFactsSkipped", unit=MetricUnit.Count, value=1)
            return []

    def remember(self, session_id: str, last: int) -> bool:
        """Merge the facts stated in the session's turns after its long-term cursor into the
        principal's memory, when they opted in; True if something was written. A no-op for
        anyone else, and for turns said before an erasure."""
        if self.users is None or last < 1:
            return False
        newest = self.repository.breakers.dynamodb.call(self.store.turns_between, session_id, last, last)
        principal = newest[0].principal if newest else None
        if not eligible(principal):
            return False
        for _ in range(_MERGE_ATTEMPTS):
            memory = self.users.read_stored(str(principal))
            outcome = self._merge(str(principal), memory, session_id, last)
            if outcome is not None:
                return outcome
        raise UserMemoryUnavailable()  # changing under us each time: retried after a later turn

    def _merge(self, principal: str, memory: UserMemory, session_id: str, last: int) -> bool | None:
        cursor = memory.cursor(session_id)
        if not memory.long_term or cursor >= last:
            return False
        first = max(cursor + 1, last - self.settings.context_turns + 1)
        turns = [
            t
            for t in self.repository.breakers.dynamodb.call(self.store.turns_between, session_id, first, last)
            if t.status != "pending" and t.principal == principal
        ]
        # The cadence, here too: a strategy that searches schedules a run after every turn (to
        # embed it), and a merge is two model calls.
        due = last - cursor >= self.settings.long_term_every_turns or any(
            tasks.states_fact(t.user) for t in turns
        )
        if not turns or not due:
            return False
        through = turns[-1].turn
        stated = [t for t in turns if t.answered and memory.mergeable(t)]
        changes = (
            tasks.extract_facts(self.model(), [f.as_fact() for f in memory.facts], stated) if stated else []
        )
        outcome = (
            self.users.merge_turns(principal, memory, session_id, through, changes) if self.users else False
        )
        if outcome:
            logger.info("long-term memory merged", extra={"through": through, "changes": len(changes)})
            metrics.add_metric(name="UserMemoryMerged", unit=MetricUnit.Count, value=1)
        return outcome

    def update_quietly(self, session_id: str) -> None:
        """``update`` for background runs: a failure is logged and counted, never raised."""
        try:
            self.update(session_id)
        except MemoryUpdateGivenUp:
            return  # logged and counted where it was given up
        except Exception as exc:  # the model, the stores, a bad answer: a background run must not die
            logger.warning(
                "memory update failed; retried after a later turn", extra={"error": type(exc).__name__}
            )
            metrics.add_metric(name="MemoryUpdateFailed", unit=MetricUnit.Count, value=1)


class MemoryUnreachable(Exception):
    """The session's stored memory state could not be read."""


class MemoryUpdateGivenUp(Exception):
    """The session's summary update failed ``update_max_attempts`` times in a row."""
