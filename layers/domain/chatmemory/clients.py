"""The DynamoDB and Redis clients, built from ``Settings``: apart from ``chatmemory.services``
so that the $connect authorizer (guest limits per source) builds them without importing the
conversation graph."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import boto3
import redis
from botocore.config import Config
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatmemory.config import Settings
from chatmemory.storage.redis_client import CacheClient, LazyCluster, SecretCredentials

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import DynamoDBServiceResource
    from redis.cluster import RedisCluster


def dynamodb_resource(settings: Settings) -> DynamoDBServiceResource:
    """DynamoDB with tight timeouts and bounded retries: the breaker, not botocore's 60 s
    default read timeout, decides how long a turn may wait on a failing table."""
    config = Config(
        connect_timeout=settings.storage.connect_timeout_seconds,
        read_timeout=settings.storage.read_timeout_seconds,
        retries={"max_attempts": settings.storage.max_attempts, "mode": "standard"},
    )
    return boto3.resource(
        "dynamodb",
        region_name=settings.aws_region,
        endpoint_url=settings.storage.dynamodb_endpoint_url,
        config=config,
    )


def redis_client(settings: Settings) -> CacheClient | None:
    """The cache's client, not yet connected; TLS when the URL is ``rediss://``."""
    cache = settings.cache
    if not cache.redis_url:
        return None
    auth: dict[str, Any] = {}
    if cache.password_secret_name:
        auth["credential_provider"] = SecretCredentials(cache.username, cache.password_secret_name)
    elif cache.username:
        auth["username"] = cache.username
    if cache.cluster:
        # The configuration endpoint's DNS name stays the node to rediscover the slots from.
        lazy = LazyCluster(
            cache.redis_url,
            socket_timeout=cache.socket_timeout_seconds,
            socket_connect_timeout=cache.connect_timeout_seconds,
            retry=Retry(NoBackoff(), retries=1),
            dynamic_startup_nodes=False,
            **auth,
        )
        return cast("RedisCluster[bytes]", lazy)  # it stands for the client it builds
    return redis.Redis.from_url(
        cache.redis_url,
        socket_timeout=cache.socket_timeout_seconds,
        socket_connect_timeout=cache.connect_timeout_seconds,
        retry=Retry(NoBackoff(), retries=1),
        health_check_interval=30,
        **auth,
    )
