"""Wiring: real clients built once per process from ``Settings``, shared by every handler.

Tests and the local stack build ``Services`` with their own clients (moto, a local Redis)
or replace the process-wide instance with ``use_services``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config

from chatmemory.breakers import Breakers
from chatmemory.clients import dynamodb_resource, redis_client
from chatmemory.config import Settings, get_settings
from chatmemory.data_rights import DataRights
from chatmemory.history import SessionMemory
from chatmemory.llm.base import ChatModel
from chatmemory.memory.state import MemoryState
from chatmemory.memory_controls import MemoryControls
from chatmemory.outbox import OutboxReplayer, TurnOutbox
from chatmemory.sender import ConnectionSender
from chatmemory.sessions import SessionService
from chatmemory.storage.bindings import ConnectionRegistry
from chatmemory.storage.cached_copy import VersionedCopies
from chatmemory.storage.memory_state import MemoryStateRepository
from chatmemory.storage.redis_client import CacheClient
from chatmemory.storage.session_meta import SessionMetaStore
from chatmemory.storage.turn_cache import TurnCache
from chatmemory.storage.turns import TurnStore
from chatmemory.storage.user_memory import UserMemoryCache, UserMemoryRepository, UserMemoryStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import DynamoDBServiceResource

    from chatmemory.conversation import Conversation
    from chatmemory.embeddings import Embedder
    from chatmemory.memory.crosssession import CrossSession, QueryMemo
    from chatmemory.memory.manager import MemoryManager
    from chatmemory.memory.retrieval import Recall
    from chatmemory.memory.scheduler import UpdateScheduler
    from chatmemory.memory.updater import MemoryUpdater
    from chatmemory.quotas import Quotas
    from chatmemory.session_list import SessionList

T = TypeVar("T")

# The clients' builders are re-exported: tests, the benchmark and the evaluation use them.
__all__ = ["Services", "dynamodb_resource", "get_services", "redis_client", "use_services"]


def outbox_client(settings: Settings) -> Any:
    """SQS for the turn outbox, with timeouts as tight as DynamoDB's: a turn never waits long
    on the queue either (its breaker opens after repeated failures)."""
    outbox = settings.outbox
    return boto3.client(
        "sqs",
        region_name=settings.aws_region,
        endpoint_url=outbox.endpoint_url,
        config=Config(
            connect_timeout=outbox.connect_timeout_seconds,
            read_timeout=outbox.read_timeout_seconds,
            retries={"max_attempts": outbox.max_attempts, "mode": "standard"},
        ),
    )


def management_client(endpoint_url: str, region: str) -> Any:
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(connect_timeout=1, read_timeout=3, retries={"max_attempts": 2, "mode": "standard"}),
    )


def owner_key(settings: Settings) -> Callable[[], bytes | None]:
    """The key of cross-session owner values: the settings' (local), else the secret's, read
    on first use (with timeouts as tight as DynamoDB's: it is on a turn's path) and kept for
    five minutes; ``None`` (the search off) when neither is set."""
    provider: list[Any] = []

    def key() -> bytes | None:
        memory = settings.memory
        if memory.owner_key:
            return memory.owner_key.encode()
        if not memory.owner_key_secret_name:
            return None
        if not provider:
            from aws_lambda_powertools.utilities.parameters import SecretsProvider

            config = Config(
                connect_timeout=settings.storage.connect_timeout_seconds,
                read_timeout=settings.storage.read_timeout_seconds,
                retries={"max_attempts": settings.storage.max_attempts, "mode": "standard"},
            )
            provider.append(SecretsProvider(boto_config=config))
        return str(provider[0].get(memory.owner_key_secret_name, max_age=300)).encode()

    return key


def _api_key(settings: Settings) -> str | None:
    if settings.llm.api_key or not settings.llm.api_key_secret_name:
        return settings.llm.api_key
    from aws_lambda_powertools.utilities import parameters

    return str(parameters.get_secret(settings.llm.api_key_secret_name, max_age=300))


class Services:
    def __init__(
        self,
        settings: Settings,
        dynamodb: DynamoDBServiceResource,
        redis: CacheClient | None,
        model: ChatModel | None = None,
        management_client_factory: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.time,
        scheduler_factory: Callable[[MemoryUpdater], UpdateScheduler] | None = None,
        sqs: Any = None,
        embedder: Embedder | None = None,
    ) -> None:
        """``sqs``: the turn outbox's client (built from the settings when a queue is named)."""
        self.settings = settings
        self.breakers = Breakers.from_settings(settings.breaker)
        self.redis = redis
        cache = None
        if redis is not None:
            cache = TurnCache(redis, settings.memory.context_turns, settings.memory.cache_ttl_seconds)
        table = dynamodb.Table(settings.storage.sessions_table)
        store, meta = TurnStore(table), SessionMetaStore(table)
        self._store = store
        outbox = None
        if settings.outbox.queue_url:
            outbox = TurnOutbox(sqs or outbox_client(settings), settings.outbox.queue_url)
        self.memory = SessionMemory(
            store=store,
            meta=meta,
            cache=cache,
            breakers=self.breakers,
            settings=settings.memory,
            clock=clock,
            outbox=outbox,
        )
        self.outbox_replayer = OutboxReplayer(
            store, meta, cache, self.breakers, settings.memory.session_ttl_seconds, clock
        )
        self.memory_state = MemoryStateRepository(
            meta,
            VersionedCopies(redis, MemoryState, settings.memory.cache_ttl_seconds)
            if redis is not None
            else None,
            self.breakers,
            lambda: int(clock()) + settings.memory.session_ttl_seconds,
        )
        self.user_memory = UserMemoryRepository(
            UserMemoryStore(dynamodb.Table(settings.storage.sessions_table)),
            UserMemoryCache(redis, settings.memory.cache_ttl_seconds) if redis is not None else None,
            self.breakers,
            settings.memory.max_facts,
            settings.identity.guest_token_ttl_seconds,
            clock,
        )
        self._embedder = embedder
        self._scheduler_factory = scheduler_factory
        self._building = threading.RLock()  # a component built once, whichever thread asks first
        self._built: dict[str, Any] = {}
        self.registry = ConnectionRegistry(
            dynamodb.Table(settings.storage.connections_table), redis, self.breakers
        )
        self._sessions_table = dynamodb.Table(settings.storage.sessions_table)
        self._model = model
        self.clock = clock
        self._management_client_factory = management_client_factory or (
            lambda url: management_client(url, settings.aws_region)
        )
        self._senders: dict[str, ConnectionSender] = {}

    # ---- built on first use: the routes that never run a turn's memory never import it
    # (numpy, the search index and the embedding model are a third of a cold start).

    def _once(self, name: str, build: Callable[[], T]) -> T:
        with self._building:
            if name not in self._built:
                self._built[name] = build()
            built: T = self._built[name]
            return built

    @property
    def recall(self) -> Recall:
        def build() -> Recall:
            from chatmemory.memory.retrieval import Recall
            from chatmemory.storage.corpus import CorpusRepository

            settings = self.settings
            corpus = CorpusRepository(
                self._store, self.redis, self.breakers, settings.memory.cache_ttl_seconds, self.clock
            )
            return Recall(corpus, self._query_embedder(), self.breakers)

        return self._once("recall", build)

    @property
    def cross_session(self) -> CrossSession | None:
        def build() -> CrossSession | None:
            from chatmemory.memory.crosssession import CrossSession
            from chatmemory.storage.vector_index import VectorIndexStore

            settings = self.settings
            if not settings.memory.cross_session:
                return None
            return CrossSession(
                VectorIndexStore(self._sessions_table, settings.memory.cross_session_index),
                self._query_embedder(),
                self.breakers,
                self.user_memory,
                owner_key(settings),
                settings.embeddings.dimensions,
                settings.memory.cross_session_top_k,
                self.clock,
            )

        return self._once("cross_session", build)

    @property
    def updater(self) -> MemoryUpdater:
        def build() -> MemoryUpdater:
            from chatmemory.memory.updater import MemoryUpdater

            return MemoryUpdater(
                self.memory_state,
                self._store,
                lambda: self.model,
                self.settings.memory,
                self.user_memory,
                self.recall,
                self.cross_session,
                self.memory.keep_alive,
                self.clock,
            )

        return self._once("updater", build)

    @property
    def scheduler(self) -> UpdateScheduler:
        return self._once(
            "scheduler", lambda: (self._scheduler_factory or self._default_scheduler)(self.updater)
        )

    @property
    def memory_manager(self) -> MemoryManager:
        def build() -> MemoryManager:
            from chatmemory.memory.manager import MemoryManager
            from chatmemory.memory.tokens import TokenEstimator

            return MemoryManager(
                self.settings.memory,
                TokenEstimator(self.settings.memory.chars_per_token),
                self.memory_state,
                self.scheduler,
                self.user_memory,
                self.recall,
                self.cross_session,
            )

        return self._once("memory_manager", build)

    @property
    def quotas(self) -> Quotas | None:
        def build() -> Quotas | None:
            from chatmemory.quotas import Quotas
            from chatmemory.storage.quota_counters import QuotaCounters

            if not self.settings.quota.enabled:
                return None
            counters = QuotaCounters(self.redis, self._sessions_table, self.breakers, self.clock)
            return Quotas(counters, self.settings.quota)

        return self._once("quotas", build)

    def _query_embedder(self) -> QueryMemo | None:
        """One embedding of the message serves both searches (in this session, and across)."""

        def build() -> QueryMemo | None:
            from chatmemory.embeddings import build_embedder
            from chatmemory.memory.crosssession import QueryMemo

            embedder = self._embedder
            if embedder is None:
                embedder = build_embedder(self.settings.embeddings, self.settings.aws_region)
            return QueryMemo(embedder) if embedder is not None else None

        return self._once("query_embedder", build)

    def _default_scheduler(self, updater: MemoryUpdater) -> UpdateScheduler:
        """The summarize function when one is configured (AWS), else a thread of this process."""
        from chatmemory.memory.scheduler import LambdaScheduler, ThreadScheduler

        function = self.settings.memory.summarize_function
        if function:
            client = boto3.client(
                "lambda",
                region_name=self.settings.aws_region,
                config=Config(
                    connect_timeout=1, read_timeout=3, retries={"max_attempts": 2, "mode": "standard"}
                ),
            )
            return LambdaScheduler(client, function)
        return ThreadScheduler(updater.update_quietly)

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        return cls(
            settings,
            dynamodb_resource(settings),
            redis_client(settings),
        )

    def sender(self, endpoint_url: str) -> ConnectionSender:
        """The @connections sender; ``CONNECTIONS_ENDPOINT_URL`` overrides the event's endpoint."""
        url = self.settings.stream.connections_endpoint_url or endpoint_url
        if url not in self._senders:
            self._senders[url] = ConnectionSender(self._management_client_factory(url))
        return self._senders[url]

    def sessions(self, endpoint_url: str) -> SessionService:
        return SessionService(
            self.registry, self.memory, self.sender(endpoint_url), self.clock, self.memory_state
        )

    def memory_controls(self, endpoint_url: str) -> MemoryControls:
        return MemoryControls(
            self.sessions(endpoint_url),
            self.memory,
            self.memory_state,
            self.user_memory,
            self.sender(endpoint_url),
            self.clock,
        )

    def session_list(self, endpoint_url: str) -> SessionList:
        from chatmemory.session_list import SessionList

        return SessionList(self.sessions(endpoint_url), self.memory, self.sender(endpoint_url), self.clock)

    def data_rights(self, endpoint_url: str) -> DataRights:
        return DataRights(self.sessions(endpoint_url), self.memory, self.sender(endpoint_url), self.clock)

    def conversation(self, endpoint_url: str) -> Conversation:
        from chatmemory.conversation import Conversation

        return Conversation(
            self.memory,
            self.model,
            self.sender(endpoint_url),
            self.settings,
            manager=self.memory_manager,
            sessions=self.sessions(endpoint_url),
            quotas=self.quotas,
        )

    @property
    def model(self) -> ChatModel:
        """Built on first use: the routes that never call the model never import its SDK."""
        if self._model is None:
            from chatmemory.llm.anthropic_model import build_chat_model

            self._model = build_chat_model(self.settings.llm, _api_key(self.settings))
        return self._model


_services: Services | None = None


def get_services() -> Services:
    """The process-wide services, created on first use (cold start)."""
    global _services
    if _services is None:
        _services = Services.from_settings(get_settings())
    return _services


def use_services(services: Services | None) -> None:
    """Replace the process-wide services (tests, the local stack); ``None`` resets them."""
    global _services
    _services = services
