"""SnapStart's runtime hooks (``chatmemory.snapstart``), run as the Lambda runtime runs them,
on real Redis and moto: before the snapshot the services are built and hold no open
connection; after a restore ``random`` no longer repeats the snapshot's sequence and the
connections made since are dropped."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import snapshot_restore_py
from chatmemory import snapstart
from chatmemory.services import Services, get_services, redis_client, use_services

from tests.conftest import make_settings


@pytest.fixture
def services(aws: Any, redis_url: str) -> Iterator[Services]:
    settings = make_settings(redis_url)
    built = Services(settings, aws, redis_client(settings))
    use_services(built)
    yield built
    use_services(None)


def test_the_hooks_register_with_the_runtime_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_restore_py, "_before_snapshot_registry", [])
    monkeypatch.setattr(snapshot_restore_py, "_after_restore_registry", [])
    assert snapstart.register() is True
    # the library keeps (function, args, kwargs) for the runtime to call
    assert [h[0] for h in snapshot_restore_py._before_snapshot_registry] == [snapstart.before_snapshot]
    assert [h[0] for h in snapshot_restore_py._after_restore_registry] == [snapstart.after_restore]


def test_before_the_snapshot_no_connection_stays_open(services: Services) -> None:
    assert services.redis is not None
    first = services.redis.client_id()  # a connection, as a warm-up call would open
    snapstart.before_snapshot()
    assert get_services() is services
    assert services.redis.client_id() != first  # that connection was closed: a new one


def test_after_a_restore_randomness_is_seeded_again_and_connections_dropped(services: Services) -> None:
    assert services.redis is not None
    random.seed(20261204)  # the state a snapshot would hand every restored environment
    snapshot = [random.random() for _ in range(3)]
    random.seed(20261204)
    before = services.redis.client_id()
    snapstart.after_restore()
    assert [random.random() for _ in range(3)] != snapshot
    assert services.redis.client_id() != before
