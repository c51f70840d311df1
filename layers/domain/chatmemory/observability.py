"""Logger, Tracer and Metrics, created once and shared by the domain and the handlers.

Message text is never logged: log calls carry ids, sizes, modes and timings only. The logger's
formatter also redacts, as a safety net, any field whose name says it may carry a message, a
reply, a token or an event body, and anything in any field that looks like a JWT.
"""

from __future__ import annotations

import os
import re
import traceback
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.logging.types import PowertoolsLogRecord

SERVICE = "chat-memory"
# On AWS each stack sets its own namespace (POWERTOOLS_METRICS_NAMESPACE), so two stacks in one
# account never feed each other's alarms; the name alone where nothing sets it.
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "ChatMemory"
REDACTED = "[redacted]"

# Field names (any case, any depth) whose values are never written to the log.
SENSITIVE_FIELDS = frozenset(
    {
        "text",
        "reply",
        "user",
        "assistant",
        "user_message",
        "assistant_reply",
        "prompt",
        "content",
        "body",
        "token",
        "guest_token",
        "guesttoken",
        "authorization",
        "querystringparameters",
        "query_string_parameters",
        "multivaluequerystringparameters",
        "event",
    }
)
# A JWT anywhere in a string: three base64url parts, the first a JSON header ("eyJ").
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def redact(value: Any, key: str | None = None) -> Any:
    if key is not None and key.lower() in SENSITIVE_FIELDS:
        return REDACTED
    if isinstance(value, str):
        return _JWT.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


class RedactingFormatter(LambdaPowertoolsFormatter):
    """Powertools' JSON log lines, with ``redact`` applied to every field first, and tracebacks
    without their exceptions' messages: a message may quote anything it was handed (pydantic's
    ``input_value=``, a ``KeyError``'s key), so only where it was raised, and its type, go out
    (``exception_name`` and the frames)."""

    def serialize(self, log: dict[str, Any] | PowertoolsLogRecord) -> str:
        fields = {k: redact(v, str(k)) for k, v in dict(log).items()}
        trace = fields.get("stack_trace")
        if isinstance(trace, dict) and "value" in trace:  # Powertools' structured traceback
            fields["stack_trace"] = {**trace, "value": REDACTED}
        return super().serialize(log=fields)

    def formatException(self, ei: Any) -> str:
        _, exc, tb = ei
        if exc is None:
            return ""
        lines: list[str] = []
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:  # the exception, then its causes
            seen.add(id(current))
            trace = traceback.format_tb(current.__traceback__ if current is not exc else tb)
            lines = [*trace, f"{type(current).__module__}.{type(current).__qualname__}: {REDACTED}\n", *lines]
            current = current.__cause__ or current.__context__
        return "".join(lines).rstrip("\n")


logger = Logger(service=SERVICE, logger_formatter=RedactingFormatter())
tracer = Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)
