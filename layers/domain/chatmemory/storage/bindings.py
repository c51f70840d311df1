"""Which session a WebSocket connection is bound to, and for whom.

Bindings live in the connections table and, written through, in Redis: a turn finds its
session even while one of the two is failing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from chatmemory.breakers import Breakers

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table

    from chatmemory.storage.redis_client import CacheClient

# API Gateway closes a WebSocket connection after two hours at most.
CONNECTION_TTL_SECONDS = 2 * 3600


class BindingUnavailable(Exception):
    """Neither DynamoDB nor Redis answered: the connection's session cannot be known now."""


class Binding(BaseModel):
    connection_id: str
    session_id: str | None  # None: memory unreachable, the session cannot be known now
    principal: str
    connected_at: int
    guest_token: str | None = (
        None  # minted at $connect (a new or renewed guest), until getSession hands it over
    )


def binding_key(connection_id: str) -> str:
    return f"conn:{{{connection_id}}}"


class ConnectionRegistry:
    def __init__(self, table: Table, redis: CacheClient | None, breakers: Breakers) -> None:
        self._table, self._redis, self._breakers = table, redis, breakers

    def bind(self, binding: Binding) -> None:
        """Record the binding; raises if neither store took it (the connection is refused)."""
        key, data = binding_key(binding.connection_id), binding.model_dump_json()
        stored = self._dynamodb(lambda: self._table.put_item(Item=_item(binding)))
        cached = self._redis_call(lambda r: r.set(key, data, ex=CONNECTION_TTL_SECONDS))
        if stored is _FAILED and cached is _FAILED:
            raise ConnectionError("no store accepted the connection binding")
        if cached is _FAILED and stored is not _FAILED:
            # A copy of the binding this one replaces must not outlive it: lookups prefer Redis.
            self._redis_call(lambda r: r.delete(key))

    def lookup(self, connection_id: str) -> Binding | None:
        """The binding, ``None`` if there is none; ``BindingUnavailable`` if no store answered."""
        cached = self._redis_call(lambda r: r.get(binding_key(connection_id)))
        if isinstance(cached, bytes):
            binding = self._parsed(connection_id, cached)
            if binding is not None:
                return binding
        item = self._dynamodb(
            lambda: self._table.get_item(Key={"connection_id": connection_id}, ConsistentRead=True).get(
                "Item"
            )
        )
        if item is _FAILED:
            raise BindingUnavailable(connection_id)
        return Binding.model_validate(item) if item else None

    def unbind(self, connection_id: str) -> Binding | None:
        """Forget the binding; returns what it was (``None`` if no store still had it)."""
        cached = self._redis_call(lambda r: r.getdel(binding_key(connection_id)))
        item = self._dynamodb(
            lambda: self._table.delete_item(Key={"connection_id": connection_id}, ReturnValues="ALL_OLD").get(
                "Attributes"
            )
        )
        if isinstance(cached, bytes) and (binding := self._parsed(connection_id, cached)) is not None:
            return binding
        return Binding.model_validate(item) if isinstance(item, dict) else None

    def _parsed(self, connection_id: str, cached: bytes) -> Binding | None:
        """The cached binding; ``None`` (and the key dropped) when it does not parse: a miss."""
        try:
            return Binding.model_validate_json(cached)
        except ValidationError:
            self._redis_call(lambda r: r.delete(binding_key(connection_id)))
            return None

    def _dynamodb(self, op: Callable[[], Any]) -> Any:
        """The operation's result, or ``_FAILED`` when DynamoDB (or its breaker) refused."""
        return self._breakers.dynamodb.attempt(op, default=_FAILED, warn="connections table unavailable")

    def _redis_call(self, op: Callable[[CacheClient], Any]) -> Any:
        if self._redis is None:
            return _FAILED
        return self._breakers.redis.attempt(
            op, self._redis, default=_FAILED, warn="Redis unavailable for bindings"
        )


_FAILED = object()


def _item(binding: Binding) -> dict[str, Any]:
    return {**binding.model_dump(), "ttl": binding.connected_at + CONNECTION_TTL_SECONDS}
