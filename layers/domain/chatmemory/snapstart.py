"""Lambda SnapStart's runtime hooks, for a function that enables it (sendMessage).

With SnapStart, init runs once per published version and its memory is snapshotted; new
environments restore that snapshot instead of running init. Before the snapshot, the services
are built (the clients and the turn's memory graph: init work a restore then skips), and no
connection is left open in them: a socket in a snapshot would be shared by every environment
restored from it, and dead after the restore. After a restore, Python's ``random`` is seeded
again (the snapshot's state would repeat in every environment; ids come from ``uuid4``, which
reads ``os.urandom``) and any connection made since is dropped again. Secrets are read on first
use with a ``max_age``, and AWS credentials come from the runtime after a restore, so neither
is kept from the snapshot.

``snapshot_restore_py`` is part of the Lambda Python runtimes that have SnapStart (3.12+);
where it is missing (local runs) nothing is registered. Registered hooks run only when
SnapStart is on, so registering them costs nothing otherwise.
"""

from __future__ import annotations

import random

import redis

from chatmemory.observability import logger
from chatmemory.services import Services, get_services
from chatmemory.storage.redis_client import LazyCluster


def drop_connections(services: Services) -> None:
    """Close the Redis client's open connections (they reconnect on their next call). boto3
    opens none before its first request, and init makes none."""
    client = services.redis
    if isinstance(client, LazyCluster):
        client.disconnect()
    elif isinstance(client, redis.Redis):
        client.connection_pool.disconnect()


def before_snapshot() -> None:
    services = get_services()
    services.memory_manager  # noqa: B018  (built now: a restore skips this work)
    drop_connections(services)
    logger.info("services built before the snapshot")


def after_restore() -> None:
    random.seed()  # from os.urandom: every restored environment its own sequence
    drop_connections(get_services())
    logger.info("restored from a snapshot: randomness seeded again, connections dropped")


def register() -> bool:
    """Register the hooks with the runtime; False where the runtime has no SnapStart."""
    try:
        from snapshot_restore_py import register_after_restore, register_before_snapshot
    except ImportError:
        return False
    register_before_snapshot(before_snapshot)
    register_after_restore(after_restore)
    return True
