"""The local runtime keeps each invocation's metrics its own, as a Lambda instance does: two
invocations on two threads, one flushing while the other has added a metric, lose nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from aws_lambda_powertools.metrics import MetricUnit
from chatmemory.observability import metrics

from local.lambda_runtime import isolate_metrics


@pytest.fixture
def isolated() -> Iterator[None]:
    """The local runtime's metrics for this test only: the rest of the suite keeps Powertools'."""
    provider = metrics.provider
    kept = provider.metric_set, provider.metadata_set
    isolate_metrics()
    yield
    provider.metric_set, provider.metadata_set = kept


@pytest.mark.usefixtures("isolated")
def test_an_invocation_that_flushes_keeps_the_others_metric(capsys: pytest.CaptureFixture[str]) -> None:
    added, flushed = threading.Event(), threading.Event()

    def refused() -> None:  # adds its metric, then flushes only after the other has flushed
        metrics.add_metric(name="RateLimited", unit=MetricUnit.Count, value=1)
        added.set()
        flushed.wait(timeout=30)
        metrics.flush_metrics()

    other = threading.Thread(target=refused)
    other.start()
    assert added.wait(timeout=30)
    metrics.add_metric(name="ModelLatency", unit=MetricUnit.Milliseconds, value=5)
    metrics.flush_metrics()  # this invocation's flush, while the other's metric is pending
    flushed.set()
    other.join(timeout=30)

    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [sorted(k for k in d if k in ("RateLimited", "ModelLatency")) for d in documents] == [
        ["ModelLatency"],
        ["RateLimited"],
    ]
