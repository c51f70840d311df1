"""The Redis client's parts that are ours: the type every cache takes, the cache user's
password from Secrets Manager, and a cluster client built on first use."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, TypeAlias

from redis.credentials import CredentialProvider
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster

# A standalone Redis, or a cluster (ElastiCache Serverless): every command used here takes
# keys of one hash tag, so both run them alike, MULTI/EXEC included (redis-py >= 6.1).
CacheClient: TypeAlias = "Redis[bytes] | RedisCluster[bytes]"


class SecretCredentials(CredentialProvider):
    """The cache user's password from Secrets Manager, asked for when a connection opens
    (Powertools caches it, so a rotated password is picked up within ``max_age``)."""

    def __init__(self, username: str | None, secret_name: str, max_age: int = 300) -> None:
        self._username, self._secret_name, self._max_age = username, secret_name, max_age

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        from aws_lambda_powertools.utilities import parameters

        password = str(parameters.get_secret(self._secret_name, max_age=self._max_age))
        return (self._username, password) if self._username else (password,)


class LazyCluster:
    """A ``RedisCluster`` built on first use.

    ``RedisCluster`` reads the slot map when it is constructed, so building it at cold start
    would make an unreachable cache fail the function's initialisation. Built here, inside
    the first breaker-guarded call, the failure is one more Redis fault (a
    ``redis.ConnectionError``) and the turn falls back to DynamoDB; the next call tries again.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self._url, self._options = url, options
        self._client: RedisCluster[bytes] | None = None
        self._lock = threading.Lock()

    def client(self) -> RedisCluster[bytes]:
        with self._lock:
            if self._client is None:
                from redis.cluster import RedisCluster

                try:
                    self._client = RedisCluster.from_url(self._url, **self._options)
                except RedisClusterException as exc:
                    raise RedisConnectionError(f"cache cluster unreachable: {exc}") from exc
            return self._client

    def disconnect(self) -> None:
        """Close the nodes' connections, if the cluster was built (never builds it)."""
        with self._lock:
            if self._client is not None:
                self._client.disconnect_connection_pools()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)
