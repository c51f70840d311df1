"""The naive Lambda handler the cold-start comparison measures against: every SDK imported
eagerly and every client created at import, the session as one JSON blob in Redis.

Loaded from its file by ``bench.coldstart`` exactly as a function's ``app.py`` is.
"""

import json
import os
import time

import anthropic
import boto3
import pybreaker
import redis

IMPORTED_AT = time.perf_counter()  # lets the cold-start probe split imports from clients

dynamodb = boto3.resource("dynamodb", endpoint_url=os.environ.get("DYNAMODB_ENDPOINT_URL"))
table = dynamodb.Table(os.environ.get("SESSIONS_TABLE", "ChatSessions"))
cache = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
model = anthropic.Anthropic(api_key=os.environ.get("ANTHROPIC_API_KEY", "offline"))
redis_breaker = pybreaker.CircuitBreaker(fail_max=3, reset_timeout=30)
dynamodb_breaker = pybreaker.CircuitBreaker(fail_max=3, reset_timeout=30)


def lambda_handler(event, context):  # type: ignore[no-untyped-def]
    body = json.loads(event.get("body") or "{}")
    key = f"naive:{body.get('sessionId', 'unknown')}"
    history = json.loads(redis_breaker.call(cache.get, key) or b"[]")
    history.append({"user": body.get("message", ""), "assistant": None})
    redis_breaker.call(cache.setex, key, 3600, json.dumps(history))
    return {"statusCode": 200}
