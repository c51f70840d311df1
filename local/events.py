"""API Gateway WebSocket events, shaped exactly as API Gateway sends them to Lambda."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime
from typing import Any

API_ID = "local"


def _request_context(
    route_key: str,
    event_type: str,
    connection_id: str,
    domain_name: str,
    stage: str,
    connected_at_ms: int,
    source_ip: str,
) -> dict[str, Any]:
    now = time.time()
    request_id = base64.b32encode(uuid.uuid4().bytes)[:16].decode()
    return {
        "routeKey": route_key,
        "eventType": event_type,
        "extendedRequestId": request_id,
        "requestTime": datetime.fromtimestamp(now, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "messageDirection": "IN",
        "stage": stage,
        "connectedAt": connected_at_ms,
        "requestTimeEpoch": int(now * 1000),
        "identity": {"sourceIp": source_ip, "userAgent": "local"},
        "requestId": request_id,
        "domainName": domain_name,
        "connectionId": connection_id,
        "apiId": API_ID,
    }


def connect_event(
    connection_id: str,
    *,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    domain_name: str = "127.0.0.1",
    stage: str = "local",
    connected_at_ms: int | None = None,
    source_ip: str = "127.0.0.1",
    authorizer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    headers = {"Host": domain_name, "Sec-WebSocket-Version": "13", **(headers or {})}
    context = _request_context(
        "$connect",
        "CONNECT",
        connection_id,
        domain_name,
        stage,
        connected_at_ms or int(time.time() * 1000),
        source_ip,
    )
    if authorizer is not None:
        context["authorizer"] = authorizer
    event: dict[str, Any] = {
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "requestContext": context,
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = query
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    return event


def authorizer_event(
    connect: dict[str, Any], api_id: str = API_ID, region: str = "us-east-1"
) -> dict[str, Any]:
    """The REQUEST authorizer's input for a ``$connect`` event."""
    context = connect["requestContext"]
    method_arn = f"arn:aws:execute-api:{region}:123456789012:{api_id}/{context['stage']}/$connect"
    event = {
        "type": "REQUEST",
        "methodArn": method_arn,
        "headers": connect["headers"],
        "multiValueHeaders": connect["multiValueHeaders"],
        "stageVariables": {},
        "requestContext": context,
    }
    for key in ("queryStringParameters", "multiValueQueryStringParameters"):
        if key in connect:
            event[key] = connect[key]
    return event


def message_event(
    connection_id: str,
    route_key: str,
    body: str,
    *,
    domain_name: str = "127.0.0.1",
    stage: str = "local",
    connected_at_ms: int | None = None,
    source_ip: str = "127.0.0.1",
    is_base64: bool = False,
) -> dict[str, Any]:
    context = _request_context(
        route_key,
        "MESSAGE",
        connection_id,
        domain_name,
        stage,
        connected_at_ms or int(time.time() * 1000),
        source_ip,
    )
    context["messageId"] = base64.b32encode(uuid.uuid4().bytes)[:16].decode()
    return {"requestContext": context, "body": body, "isBase64Encoded": is_base64}


def disconnect_event(
    connection_id: str,
    *,
    status_code: int = 1001,
    reason: str = "Client-side close frame status code '1001' (GOING_AWAY)",
    domain_name: str = "127.0.0.1",
    stage: str = "local",
    connected_at_ms: int | None = None,
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    context = _request_context(
        "$disconnect",
        "DISCONNECT",
        connection_id,
        domain_name,
        stage,
        connected_at_ms or int(time.time() * 1000),
        source_ip,
    )
    context["disconnectStatusCode"] = status_code
    context["disconnectReason"] = reason
    headers = {"Host": domain_name}
    return {
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "requestContext": context,
        "isBase64Encoded": False,
    }
