"""Logger, Tracer and Metrics, created once and shared by the domain and the handlers.

Message text is never logged: log calls carry ids, sizes, modes and timings only.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "chat-memory"
NAMESPACE = "ChatMemory"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)
