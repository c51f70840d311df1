"""Shared fixtures: fake AWS credentials once, moto (in-process) for DynamoDB and the
@connections API, and the real Redis at ``REDIS_URL`` (default 127.0.0.1:6379, database 15)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws

os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "ChatMemoryTests",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }
)

from chatmemory.config import Settings
from chatmemory.services import Services, use_services

from local.template import create_tables
from tests.support.frames import ENDPOINT
from tests.support.processes import DynaliteProcess

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TABLE_NAMES = {"ChatSessionsTable": "ChatSessions", "ConnectionsTable": "ChatConnections"}
VECTOR_DIMENSIONS = 256  # the tests' embedding model's (wordllama), and the vector index's


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"these tests need a real Redis at {TEST_REDIS_URL} (see README)")
    client.flushdb()
    yield TEST_REDIS_URL
    client.flushdb()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "moto_only(reason): runs on moto alone, not on dynalite (it lacks an API, e.g. TransactWriteItems)",
    )


@pytest.fixture(scope="session")
def dynalite() -> Iterator[DynaliteProcess]:
    """One dynalite for the run (tables are made anew for each test)."""
    with DynaliteProcess() as process:
        yield process


@pytest.fixture(params=["moto", "dynalite"])
def aws(request: pytest.FixtureRequest) -> Iterator[Any]:
    """DynamoDB with the template's tables, on two engines: moto in-process, and dynalite,
    which rejects the requests DynamoDB rejects where moto is lenient. Everything else AWS
    (the @connections API, SQS) is moto's either way."""
    with mock_aws():
        if request.param == "moto":
            dynamodb = boto3.resource("dynamodb", region_name="us-east-1")
            create_tables(dynamodb, TABLE_NAMES, vector_dimensions=VECTOR_DIMENSIONS)
        else:
            marker = request.node.get_closest_marker("moto_only")
            if marker is not None:
                pytest.skip(f"moto only: {marker.args[0] if marker.args else marker.kwargs['reason']}")
            dynamodb = fresh_dynalite_tables(request.getfixturevalue("dynalite"))
        yield dynamodb


def fresh_dynalite_tables(server: DynaliteProcess) -> Any:
    """A DynamoDB resource on dynalite whose tables are the template's, new and empty."""
    dynamodb = boto3.resource("dynamodb", region_name="us-east-1", endpoint_url=server.url)
    client = dynamodb.meta.client
    for name in client.list_tables()["TableNames"]:
        client.delete_table(TableName=name)
        waiter = client.get_waiter("table_not_exists")
        waiter.wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    # dynalite has no UpdateTimeToLive: expiry is the code's own filter on either engine.
    create_tables(dynamodb, TABLE_NAMES, time_to_live=False, vector_indexes=False)
    return dynamodb


def make_settings(redis_url: str | None, **overrides: Any) -> Settings:
    env: dict[str, Any] = {
        "cache": {"redis_url": redis_url},
        "llm": {"provider": "offline", "offline_delay_seconds": 0},
        # The static embedding model: a tenth of E5's CPU per turn; ranking quality is the eval's.
        "embeddings": {"provider": "wordllama", "dimensions": VECTOR_DIMENSIONS},
        "memory": {"history_turns": 10, "owner_key": "test-owner-key"},
        "breaker": {"fail_max": 2, "reset_timeout_seconds": 0.5},
        "stream": {"flush_chars": 40, "flush_interval_seconds": 0.05},
        # Tests send many messages and make many guests at once: quotas out of their way, except
        # where a test sets its own (tests/integration/test_quotas.py).
        "quota": {
            "messages_per_window": 1_000_000,
            "tokens_per_day": 1_000_000_000,
            "guests_per_source_burst": 1_000_000,
            "guests_per_source_per_hour": 1_000_000,
        },
    }
    for group, values in overrides.items():
        env.setdefault(group, {}).update(values)
    return Settings(**env)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
def services(aws: Any, settings: Settings) -> Iterator[Services]:
    """The real service graph on moto and real Redis, installed for the handlers."""
    from chatmemory.llm.anthropic_model import build_chat_model
    from chatmemory.services import redis_client

    built = Services(settings, aws, redis_client(settings), build_chat_model(settings.llm, None))
    use_services(built)
    yield built
    use_services(None)


@pytest.fixture
def endpoint() -> str:
    return ENDPOINT
