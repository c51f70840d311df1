"""Logger, Tracer and Metrics, created once and shared by the domain and the handlers.

Message text is never logged: log calls carry ids, sizes, modes and timings only.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "chat-memory"
# On AWS each stack sets its own namespace (POWERTOOLS_METRICS_NAMESPACE), so two stacks in one
# account never feed each other's alarms; the name alone where nothing sets it.
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "ChatMemory"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)
