"""Connecting a WebSocket to a session, and showing a session to a (re)loaded page."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools.metrics import MetricUnit

from chatmemory.config import StrategyName
from chatmemory.errors import BadRequest, Forbidden, MemoryUnavailable, NoSession
from chatmemory.history import SessionMemory
from chatmemory.observability import logger, metrics
from chatmemory.protocol import HistoryTurn, session_frame, turn_frames
from chatmemory.sender import FrameSender
from chatmemory.storage.bindings import Binding, BindingUnavailable, ConnectionRegistry
from chatmemory.storage.memory_state import MemoryStateRepository
from chatmemory.turns import Turn

T = TypeVar("T")


def _history_turn(turn: Turn) -> HistoryTurn:
    return HistoryTurn(turn=turn.turn, user=turn.user, assistant=turn.assistant, at=turn.at)


def valid_session_id(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value, version=4))
    except ValueError:
        return None


def end_conversation(registry: ConnectionRegistry, memory: SessionMemory, connection_id: str) -> None:
    """Forget the connection's binding (the session stays) and count the conversation's end:
    the product analytics' ``ConversationEnded`` and ``TurnsPerSession``, the turn number the
    session had reached when the connection closed (not counted while memory is unreachable)."""
    binding = registry.unbind(connection_id)
    metrics.add_metric(name="ConversationEnded", unit=MetricUnit.Count, value=1)
    if binding is None or binding.session_id is None:
        return
    history = memory.load(binding.session_id)
    if history.source != "none":
        metrics.add_metric(name="TurnsPerSession", unit=MetricUnit.Count, value=history.last_turn_number)


class SessionService:
    def __init__(
        self,
        registry: ConnectionRegistry,
        memory: SessionMemory,
        sender: FrameSender,
        clock: Callable[[], float],
        memory_state: MemoryStateRepository | None = None,
    ) -> None:
        self._registry, self._memory, self._sender, self._clock = registry, memory, sender, clock
        self._memory_state = memory_state

    def connect(
        self,
        connection_id: str,
        requested_session_id: str | None,
        principal: str,
        guest_token: str | None = None,
    ) -> Binding:
        """Bind the connection to the requested session when it has history and belongs to
        this principal, else to a new one.

        Session ids are made here (UUIDv4, so partitions spread evenly), never by clients: an
        unknown, expired or someone else's id starts a fresh session, and the client cannot
        tell which of the three it was.
        """
        session_id = valid_session_id(requested_session_id)
        if session_id is not None and not self.resumable(session_id, principal):
            session_id = None
        binding = Binding(
            connection_id=connection_id,
            session_id=session_id or str(uuid.uuid4()),
            principal=principal,
            connected_at=int(self._clock()),
            guest_token=guest_token,
        )
        self._registry.bind(binding)
        return binding

    def resumable(self, session_id: str, principal: str) -> bool:
        turns = self._memory.load(session_id).turns
        if not turns:
            return False
        if turns[-1].principal != principal:
            logger.warning("resume of another principal's session refused", extra={"session_id": session_id})
            return False
        return True

    def disconnect(self, connection_id: str) -> None:
        end_conversation(self._registry, self._memory, connection_id)

    def binding(self, connection_id: str) -> Binding:
        """The connection's binding. While memory is unreachable the session is unknown
        (``session_id`` None): the conversation then answers statelessly rather than not at all."""
        try:
            binding = self._registry.lookup(connection_id)
        except BindingUnavailable:
            return Binding(connection_id=connection_id, session_id=None, principal="unknown", connected_at=0)
        if binding is None:
            raise NoSession()
        return binding

    def bound(self, connection_id: str) -> Binding:
        """The connection's binding to a known session; ``MemoryUnavailable`` while the session
        cannot be known (what the routes that act on a session answer then)."""
        binding = self.binding(connection_id)
        if binding.session_id is None:
            raise MemoryUnavailable()
        return binding

    def new_session(self, connection_id: str, strategy: StrategyName | None = None) -> dict[str, Any]:
        """Bind the connection to a fresh session (the old one stays, resumable by its owner)
        and send its ``session`` frame. With ``strategy``, the new session gets its own memory
        strategy, stored before the connection moves to it (a failure leaves it where it was)."""
        current = self.binding(connection_id)
        session_id = str(uuid.uuid4())
        if strategy is not None:
            if self._memory_state is None:
                raise MemoryUnavailable()
            self._memory_state.set_strategy(session_id, strategy)
        return self._announce(self.rebind(current, session_id), strategy)

    def fresh_session(self, binding: Binding) -> Binding:
        """Bind the connection to a fresh session and send its ``session`` frame."""
        fresh = self.rebind(binding)
        self._announce(fresh)
        return fresh

    def _announce(self, binding: Binding, strategy: StrategyName | None = None) -> dict[str, Any]:
        frame = session_frame(
            str(binding.session_id),
            resumed=False,
            history=[],
            memory_mode="full",
            guest_token=binding.guest_token,
            memory_strategy=strategy or self._memory.settings.strategy,
        )
        self._sender.send(binding.connection_id, frame)
        return frame

    def rebind(self, binding: Binding, session_id: str | None = None) -> Binding:
        """Bind the connection to a fresh session (``session_id``, else a new one), for the
        same principal."""
        fresh = binding.model_copy(
            update={"session_id": session_id or str(uuid.uuid4()), "connected_at": int(self._clock())}
        )
        try:
            self._registry.bind(fresh)
        except ConnectionError as exc:
            raise MemoryUnavailable() from exc
        return fresh

    def stop_reply(self, connection_id: str) -> None:
        """Ask the reply being written for the bound session to stop: its ``done`` frame says
        ``stopped`` and the turn is stored as interrupted. A reply that ends first is whole."""
        session_id = self._session_of(self.binding(connection_id))
        if not self._memory.request_stop(session_id):
            raise MemoryUnavailable()
        logger.info("stop asked")

    def send_older(self, connection_id: str, before: int) -> dict[str, Any]:
        """Send a ``session`` frame with the turns numbered below ``before`` (oldest first), as
        many of the N before it as fit in a frame, and ``hasMore``: whether older turns remain."""
        binding = self.binding(connection_id)
        session_id = self._session_of(binding)
        size, now = self._memory.settings.history_turns, int(self._clock())
        page = self._dynamodb(self._memory.store.turns_before, session_id, before, size + 1)
        last = self._dynamodb(self._memory.store.last_turn_number, session_id)
        self._check_owner(binding, page)
        # TTLs grow with the turn number: past the first expired turn, every older one is expired too.
        live = [t for t in page if t.expires_at > now]
        shown = live[:size]
        # A short page whose oldest turn is live and not the first was cut by DynamoDB's 1 MB
        # response limit: older turns may remain.
        cut = len(page) < size + 1 and bool(live) and len(live) == len(page) and live[-1].turn > 1
        frame = session_frame(
            session_id,
            resumed=last > 0,
            history=[_history_turn(t) for t in reversed(shown)],
            memory_mode="full",
            guest_token=binding.guest_token,
            has_more=len(live) > size or cut,
            before=before,
        )
        self._sender.send(connection_id, frame)
        return frame

    def send_session(self, connection_id: str) -> dict[str, Any]:
        """Send the ``session`` frame: the id, whether it was resumed, and the last N turns (as
        many of them as fit in a frame), with ``hasMore`` when it is known."""
        binding = self.binding(connection_id)
        session_id = self._session_of(binding)
        history = self._memory.load_checked(session_id)
        shown = history.turns[-self._memory.settings.history_turns :]
        frame = session_frame(
            session_id,
            resumed=bool(history.turns),
            history=[_history_turn(t) for t in shown],
            memory_mode=history.mode,
            guest_token=binding.guest_token,
            has_more=self._older_than(session_id, history.turns, len(shown), history.mode),
            memory_strategy=self.strategy_of(session_id) if history.mode != "stateless" else None,
        )
        self._sender.send(connection_id, frame)
        if binding.guest_token:
            self._handed_over(binding)
        return frame

    def _handed_over(self, binding: Binding) -> None:
        """A guest token is a bearer credential: once its session frame has gone out, the page
        holds it and the binding keeps it no longer."""
        try:
            self._registry.bind(binding.model_copy(update={"guest_token": None}))
        except ConnectionError as exc:  # it expires with the binding (two hours at most)
            logger.warning("could not drop a handed-over guest token", extra={"error": type(exc).__name__})

    def _older_than(self, session_id: str, window: list[Turn], shown: int, mode: str) -> bool | None:
        """Whether live turns older than the last ``shown`` of ``window`` remain; ``None`` when
        that cannot be known (memory unreachable)."""
        if mode == "stateless":
            return None
        if len(window) > shown:
            return True
        if not window or window[0].turn == 1:
            return False
        # The window starts after turn 1: the turns before it are older than the window (or
        # expired, and then every older one is too).
        older = self._memory.breakers.dynamodb.attempt(
            self._memory.store.turns_before, session_id, window[0].turn, 1, default=None
        )
        if older is None:
            return None
        return any(t.expires_at > int(self._clock()) for t in older)

    def send_turn(self, connection_id: str, number: int) -> list[dict[str, Any]]:
        """Send one turn's whole text as ``turn`` frames (a history entry may hold only its
        beginning). A turn the session does not have, or no longer has: ``BadRequest``."""
        binding = self.binding(connection_id)
        session_id = self._session_of(binding)
        found = self._dynamodb(self._memory.store.turns_between, session_id, number, number)
        self._check_owner(binding, found)
        live = [t for t in found if t.expires_at > int(self._clock())]
        if not live:
            raise BadRequest(f"This conversation has no turn {number}.")
        frames = turn_frames(session_id, _history_turn(live[0]))
        for frame in frames:
            self._sender.send(connection_id, frame)
        return frames

    def _session_of(self, binding: Binding) -> str:
        if binding.session_id is None:
            raise MemoryUnavailable()
        return binding.session_id

    def _dynamodb(self, operation: Callable[..., T], *args: Any) -> T:
        return self._memory.breakers.dynamodb.require(operation, *args)

    def _check_owner(self, binding: Binding, turns: list[Turn]) -> None:
        if any(t.principal != binding.principal for t in turns):
            logger.warning(
                "read of another principal's session refused", extra={"session_id": binding.session_id}
            )
            raise Forbidden("This conversation belongs to someone else.")

    def strategy_of(self, session_id: str) -> StrategyName | None:
        """The session's memory strategy (its own or the deployment's); ``None`` when its
        memory state cannot be read."""
        if self._memory_state is None:
            return None
        state = self._memory_state.get(session_id)
        if state is None:
            return None
        return state.strategy or self._memory.settings.strategy
