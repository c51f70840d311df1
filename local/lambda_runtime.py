"""Run the template's Lambda handlers in this process, as the Lambda runtime would: each
function's code root importable on its own, a context with a real remaining-time clock, and
each invocation's metrics its own (an instance of Lambda runs one invocation at a time; here
invocations run on threads of one process, and Powertools keeps its metrics in one dict per
process: an invocation that flushed while another added a metric lost it)."""

from __future__ import annotations

import importlib.util
import threading
import time
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from local.template import Function

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class LambdaContext:
    function_name: str
    timeout_seconds: float = 29.0
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _deadline: float = 0.0

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"local/{self.aws_request_id}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class PerThread(MutableMapping[str, Any]):
    """A mapping with a dict of its own on each thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _data(self) -> dict[str, Any]:
        if not hasattr(self._local, "data"):
            self._local.data = {}
        data: dict[str, Any] = self._local.data
        return data

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())


def isolate_metrics() -> None:
    """Give each thread (each invocation) its own metrics and metadata, as a Lambda instance
    has; the dimensions (the service) stay shared, as every invocation sets the same."""
    from chatmemory.observability import metrics

    provider = metrics.provider
    if not isinstance(provider.metric_set, PerThread):
        provider.metric_set = PerThread()  # type: ignore[assignment]
        provider.metadata_set = PerThread()  # type: ignore[assignment]


_handlers: dict[str, Handler] = {}


def load_handler(function: Function) -> Handler:
    """Import the function's handler module from its CodeUri (once) and return the handler."""
    if function.logical_id not in _handlers:
        spec = importlib.util.spec_from_file_location(
            f"functions.{function.logical_id}", function.module_file
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {function.module_file}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        isolate_metrics()
        _handlers[function.logical_id] = getattr(module, function.function_name)
    return _handlers[function.logical_id]


def invoke(function: Function, event: dict[str, Any], timeout_seconds: float = 29.0) -> Any:
    return load_handler(function)(event, LambdaContext(function.logical_id, timeout_seconds))
