"""Session memory: Redis first, DynamoDB behind it, stateless when neither answers.

Every call to a dependency goes through its circuit breaker, so a dead Redis or DynamoDB
costs one client timeout until the breaker opens and nothing after that. Memory modes:

* ``full``: the history came from the cache or from DynamoDB, and the turn is stored;
* ``cache_only``: DynamoDB is failing but the cache answered;
* ``stateless``: neither answered; the model sees only the new message.

A turn of a known session that DynamoDB cannot take now is *deferred*: once answered, it goes to
the outbox (``chatmemory.outbox``), which stores it when DynamoDB is back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aws_lambda_powertools.metrics import MetricUnit

from chatmemory.breakers import Breakers
from chatmemory.config import MemorySettings
from chatmemory.errors import Busy, DuplicateTurn, SessionErased, TurnConflict
from chatmemory.observability import logger, metrics, tracer
from chatmemory.outbox import OutboxRecord, TurnOutbox
from chatmemory.protocol import MemoryMode
from chatmemory.storage.session_meta import SessionMetaStore
from chatmemory.storage.turn_cache import TurnCache
from chatmemory.storage.turns import TurnStore
from chatmemory.storage.user_memory import eligible
from chatmemory.turns import Turn, TurnStatus, Usage

T = TypeVar("T")


@dataclass
class History:
    turns: list[Turn]
    mode: MemoryMode
    source: Literal["cache", "dynamodb", "none"]

    @property
    def last_turn_number(self) -> int:
        return self.turns[-1].turn if self.turns else 0


@dataclass
class StartedTurn:
    turn: Turn
    history: History  # the turns before this one
    persisted: bool
    deferred: bool = False  # not persisted: the finished turn goes to the outbox
    reply_deferred: bool = False  # persisted, but its reply went to the outbox (set by finish_turn)


# A session longer than the turns a turn loads, with no note of its expiry yet: how often the
# memory worker is asked to look at its oldest turn (a read of a few items).
_UNNOTED_EVERY = 10


@dataclass
class SessionMemory:
    store: TurnStore
    meta: SessionMetaStore  # the session's meta item and tombstone
    cache: TurnCache | None
    breakers: Breakers
    settings: MemorySettings
    clock: Callable[[], float]
    outbox: TurnOutbox | None = None
    # Sessions whose cache entry may have missed a write while Redis was failing: dropped
    # before they are read again, so the cache never serves a history with a hole.
    _dirty: set[str] = field(default_factory=set)

    # ---- reads -------------------------------------------------------------------------

    def load(self, session_id: str, context: bool = False) -> History:
        """The last N turns, or with ``context`` every turn a memory strategy may use (see
        ``MemorySettings.context_turns``): cache, then DynamoDB (refilling the cache), then nothing."""
        history = self._load(session_id)
        if not context:
            history.turns = history.turns[-self.settings.history_turns :]
        return history

    def load_checked(self, session_id: str) -> History:
        """``load(context=True)`` for a reader that stores nothing after it (a page's history):
        a cached window is checked against the store's newest answered turn (one small query),
        since a writer in another process may have stored a turn that Redis then failed to
        take. A writer needs no check: its conditional put finds a stale window out."""
        history = self._load(session_id)
        if history.source != "cache":
            return history
        newest = self.breakers.dynamodb.attempt(self.store.newest_answered_turn, session_id, default=None)
        if newest is None or newest <= history.last_turn_number:  # None: the cache is the best there is
            return history
        logger.info("cached window behind the store; read again", extra={"cached": history.last_turn_number})
        self._cache_invalidate(session_id)
        return self._reload_from_store(session_id) or history

    def _load(self, session_id: str) -> History:
        cached = self._cache_read(session_id, self._now())
        if cached is not None:
            metrics.add_metric(name="CacheHit", unit=MetricUnit.Count, value=1)
            return History(cached, "full", "cache")
        metrics.add_metric(name="CacheMiss", unit=MetricUnit.Count, value=1)
        return self._reload_from_store(session_id) or History([], "stateless", "none")

    def _reload_from_store(self, session_id: str) -> History | None:
        stored = self._store_read(session_id, self._now())
        if stored is None:
            return None
        self._cache_fill(session_id, stored)
        return History(stored, "full", "dynamodb")

    # ---- the turn ----------------------------------------------------------------------

    @tracer.capture_method(capture_response=False)
    def begin_turn(
        self,
        session_id: str,
        principal: str | None,
        message: str,
        client_message_id: str | None,
        message_id: str | None = None,
    ) -> StartedTurn:
        """Load the history and persist the user's message under the next turn number.

        The conditional put detects a concurrent writer or a stale cache: the cache is then
        dropped, the history re-read from DynamoDB and the allocation tried once more.

        A message already stored (same ``client_message_id``, or the same frame, ``message_id``,
        delivered twice) raises ``DuplicateTurn`` instead of taking a second turn. While the
        session's last turn is still being answered, another message gets ``Busy``: a turn's
        context always holds the turn before it. Every read of the history is checked, so two
        messages racing for one number find each other: the loser re-reads and sees the winner's
        turn. A session erased from another connection raises ``SessionErased`` rather than
        coming back under its old id.

        Idempotency rests on this conditional put rather than on Powertools' idempotency
        utility: a retry must get the stored reply re-sent as frames, to whichever connection
        asks, and the turn item (keyed by its number, carrying both ids) already is that record;
        a separate idempotency record would be a second write on every turn and could disagree
        with the turn it stands for.
        """
        history = self.load(session_id, context=True)
        self._check_taken(history, client_message_id, message_id)
        number = history.last_turn_number + 1
        for attempt in range(2):
            turn = self._new_turn(session_id, number, principal, message, client_message_id, message_id)
            put = self.breakers.dynamodb.attempt(
                self._put_unless_taken, turn, default=None, warn="could not store the user's message"
            )
            if put is None:
                mode: MemoryMode = "cache_only" if history.source == "cache" else "stateless"
                kept = history.turns if mode == "cache_only" else []
                deferred = self.outbox is not None
                return StartedTurn(turn, History(kept, mode, history.source), False, deferred)
            if put:
                self._withdraw_if_erased(turn)
                return StartedTurn(turn, history, persisted=True)
            logger.info("turn number taken, re-reading history", extra={"attempt": attempt})
            self._cache_invalidate(session_id)
            reloaded = self._reload_from_store(session_id)
            if reloaded is None:  # DynamoDB failed right after: no history to trust
                return StartedTurn(turn, History([], "stateless", "none"), persisted=False)
            history = reloaded
            self._check_taken(history, client_message_id, message_id)
            # Expired items still hold their numbers until DynamoDB deletes them. They are
            # always the oldest: a stored number past the history's last is a turn written
            # since it was read, which the new turn's context would lack.
            stored = self.breakers.dynamodb.attempt(self.store.last_turn_number, session_id, default=0)
            if history.turns and stored > history.last_turn_number:
                raise Busy()
            number = max(history.last_turn_number, stored) + 1
        raise Busy()

    def _put_unless_taken(self, turn: Turn) -> bool:
        """Store the user's message under its number; False if the number is taken."""
        try:
            self.store.put_user_message(turn)
        except TurnConflict:
            return False
        return True

    # ---- expiry: a session lives as long as it is used --------------------------------

    def expiry_due(self, started: StartedTurn, turns_expire_at: int) -> bool:
        """Whether the memory worker should keep the session's turns alive after this turn:
        their earliest expiry, as the meta item notes it (``turns_expire_at``, from the memory
        state the turn already has: no store is asked on the hot path), is less than half a TTL
        away. Not noted (a session without a meta item yet: no summary, no strategy of its
        own): by the loaded window's oldest turn, which is the session's while the session fits
        the window; past that, every ``_UNNOTED_EVERY`` turns the worker looks."""
        if turns_expire_at:
            return self._half_gone(turns_expire_at)
        turns = started.history.turns
        if not turns:
            return False
        longer = len(turns) >= self.settings.context_turns
        return self._half_gone(turns[0].expires_at) or (longer and started.turn.turn % _UNNOTED_EVERY == 0)

    def _half_gone(self, expires_at: int) -> bool:
        return expires_at - self._now() <= self.settings.session_ttl_seconds // 2

    def keep_alive(self, session_id: str, turns_expire_at: int) -> tuple[int, int] | None:
        """Off the hot path (the memory worker): when the session's oldest live turn is past
        half its TTL, every live item's TTL moves to a full TTL from now (about twice per TTL
        period of an active session, whatever its length) and the cached window, whose copies
        carry the old expiry, is dropped. Returns the oldest live turn and when it now expires,
        for the meta item to note; ``None`` when there is nothing to note. Faults propagate."""
        if turns_expire_at and not self._half_gone(turns_expire_at):
            return None
        now = self._now()
        oldest = self.breakers.dynamodb.call(self.store.oldest_live_turn, session_id, now)
        if oldest is None:
            return None
        number, expires_at = oldest
        if self._half_gone(expires_at):
            expires_at = self._expiry()
            self.breakers.dynamodb.call(self.store.extend_expiry, session_id, expires_at, now)
            self._cache_invalidate(session_id)
        return number, expires_at

    def note_activity(self, started: StartedTurn) -> None:
        """After ``done``: list the session under its principal as active now (``listSessions``,
        newest first). A failure leaves the list one turn behind; the next turn notes it."""
        turn = started.turn
        if not started.persisted or not eligible(turn.principal):
            return
        self.breakers.listing.succeeds(
            self.meta.record_activity,
            turn.session_id,
            str(turn.principal),
            turn.turn,
            int(1000 * self.clock()),  # milliseconds: sessions used within a second keep their order
            turn.expires_at,
            warn="could not list the session's activity",
        )

    # ---- stopping a reply: a mark in Redis that the streaming turn looks at ----------------

    def request_stop(self, session_id: str) -> bool:
        """Ask the reply being written for the session to stop; False if it cannot be asked
        (no cache, or Redis failing): the turn streaming reads the mark from Redis only."""
        if self.cache is None:
            return False
        now_ms = int(1000 * self.clock())
        return self.breakers.redis.succeeds(
            lambda c: c.request_stop(session_id, now_ms, self.settings.turn_timeout_seconds),
            self.cache,
            warn="could not ask the reply to stop",
        )

    def stop_requested(self, session_id: str, since_ms: int) -> bool:
        """Whether the user asked to stop a reply of the session after ``since_ms`` (when the
        turn asking began)."""
        if self.cache is None:
            return False
        at = self.breakers.redis.attempt(self.cache.stop_requested_at, session_id, default=0)
        return at >= since_ms

    def stateless_turn(self, message: str) -> StartedTurn:
        """A turn for a connection whose session cannot be known: answered, not stored."""
        turn = self._new_turn("unknown", 1, None, message, None)
        return StartedTurn(turn, History([], "stateless", "none"), persisted=False)

    @tracer.capture_method(capture_response=False)
    def finish_turn(
        self, started: StartedTurn, reply: str, status: TurnStatus, usage: Usage, user_tokens: int = 0
    ) -> bool:
        """Store the reply on the turn item, then write the finished turn through to Redis.

        Returns whether the reply is stored (or, for a deferred turn, queued in the outbox). The
        user's message is stored either way.
        """
        if not (started.persisted or started.deferred):
            return False
        turn = started.turn.model_copy(
            update={
                "assistant": reply,
                "status": status,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "user_tokens": user_tokens,
                "cache_read_tokens": usage.cache_read_input_tokens,
                "cache_creation_tokens": usage.cache_creation_input_tokens,
                "expires_at": self._expiry(),
            }
        )
        if not started.persisted:
            return self._defer(turn)
        stored = self.breakers.dynamodb.succeeds(
            self.store.finish_turn,
            turn.session_id,
            turn.turn,
            reply,
            status,
            usage,
            turn.expires_at,
            user_tokens,
            warn="could not store the reply",
        )
        if not stored:
            # The message is stored, its reply is not: the outbox finishes that very item later.
            started.reply_deferred = self._defer(turn, stored=True)
            # DynamoDB still says pending: without this mark the session's next message would
            # be refused as busy until the turn timeout, though nothing is being answered.
            self._cache_write(
                turn.session_id,
                lambda c: c.mark_ended(turn.session_id, turn.turn, self.settings.turn_timeout_seconds),
            )
            return started.reply_deferred
        self._cache_write(
            turn.session_id, lambda c: c.append(turn.session_id, turn, first_turn=turn.turn == 1)
        )
        return True

    def _defer(self, turn: Turn, stored: bool = False) -> bool:
        """Queue the finished turn for DynamoDB (behind the outbox's own breaker); ``stored``:
        its message already is, under ``turn.turn``, and only the reply is missing."""
        if self.outbox is None:
            return False
        record = OutboxRecord(turn=turn, stored=stored)
        if not self.breakers.outbox.succeeds(self.outbox.send, record, warn="could not queue the turn"):
            return False
        metrics.add_metric(name="OutboxTurnQueued", unit=MetricUnit.Count, value=1)
        return True

    # ---- helpers -----------------------------------------------------------------------

    def _now(self) -> int:
        return int(self.clock())

    def _expiry(self) -> int:
        return self._now() + self.settings.session_ttl_seconds

    def _new_turn(
        self,
        session_id: str,
        number: int,
        principal: str | None,
        message: str,
        client_message_id: str | None,
        message_id: str | None = None,
    ) -> Turn:
        return Turn(
            session_id=session_id,
            turn=number,
            user=message,
            at=self._now(),
            expires_at=self._expiry(),
            principal=principal,
            client_message_id=client_message_id,
            message_id=message_id,
        )

    def _check_taken(self, history: History, client_message_id: str | None, message_id: str | None) -> None:
        _check_duplicate(history, client_message_id, message_id)
        last = history.turns[-1] if history.turns else None
        if (
            last
            and last.status == "pending"
            and self._now() - last.at < self.settings.turn_timeout_seconds
            and not self._ended(last)
        ):
            raise Busy()

    def _ended(self, turn: Turn) -> bool:
        """The pending turn ended without its reply stored (marked in Redis by its handler)."""
        if self.cache is None:
            return False
        return bool(self.breakers.redis.attempt(self.cache.ended, turn.session_id, default=None) == turn.turn)

    def _withdraw_if_erased(self, turn: Turn) -> None:
        """After the put, not before: erasure leaves its tombstone before it deletes, so a turn
        that landed after the erasure's last pass sees the tombstone here, at whatever number
        (a tab whose history was read before the erasure writes the next one), and takes its
        item back; one that landed before it, the erasure deleted."""
        dynamodb = self.breakers.dynamodb
        # Fails open, like the other reads of a turn: the turn goes on.
        if not dynamodb.attempt(self.meta.is_erased, turn.session_id, self._now(), default=False):
            return
        dynamodb.succeeds(
            self.store.delete_items,
            turn.session_id,
            [turn.turn],
            warn="could not withdraw a turn from an erased session",
        )
        raise SessionErased()

    def _store_read(self, session_id: str, now: int) -> list[Turn] | None:
        return self.breakers.dynamodb.attempt(
            self.store.latest_turns,
            session_id,
            self.settings.context_turns,
            now,
            default=None,
            warn="DynamoDB read failed",
        )

    def _cache_read(self, session_id: str, now: int) -> list[Turn] | None:
        if self.cache is None:
            return None
        if session_id in self._dirty:
            self._cache_write(session_id, lambda c: c.invalidate(session_id))
            if session_id in self._dirty:
                return None
        return self.breakers.redis.attempt(
            self.cache.window, session_id, now, default=None, warn="Redis read failed"
        )

    def _cache_fill(self, session_id: str, turns: list[Turn]) -> None:
        # Trailing pending turns are left out: their finished version is appended later.
        end = len(turns)
        while end and turns[end - 1].status == "pending":
            end -= 1
        self._cache_write(session_id, lambda c: c.fill(session_id, turns[:end]))

    def _cache_invalidate(self, session_id: str) -> None:
        self._cache_write(session_id, lambda c: c.invalidate(session_id))

    def _cache_write(self, session_id: str, op: Callable[[TurnCache], Any]) -> None:
        if self.cache is None:
            return
        if self.breakers.redis.succeeds(op, self.cache, warn="Redis write failed; entry marked for repair"):
            self._dirty.discard(session_id)
        else:
            self._dirty.add(session_id)


def _check_duplicate(history: History, client_message_id: str | None, message_id: str | None) -> None:
    for turn in reversed(history.turns):
        if (client_message_id and turn.client_message_id == client_message_id) or (
            message_id and turn.message_id == message_id
        ):
            raise DuplicateTurn(turn)
