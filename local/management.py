"""API Gateway's ``@connections`` management API, and the local fault switch.

Errors are answered as API Gateway answers them, so the ordinary boto3
``apigatewaymanagementapi`` client raises its modelled exceptions (``GoneException``,
``PayloadTooLargeException``): botocore's rest-json parser takes the error code from the
``x-amzn-ErrorType`` header.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

from local.faults import MODES

if TYPE_CHECKING:
    from local.gateway import Connection, Gateway


def add_routes(app: web.Application, gateway: Gateway) -> None:
    api = _ConnectionsApi(gateway)
    # boto3 puts the endpoint URL's path (a stage) in front of the operation's path.
    for prefix in ("", "/{stage}"):
        app.router.add_post(prefix + "/@connections/{id}", api.post)
        app.router.add_get(prefix + "/@connections/{id}", api.get)
        app.router.add_delete(prefix + "/@connections/{id}", api.delete)
    app.router.add_get("/_local/faults", api.faults)
    app.router.add_post("/_local/faults", api.set_faults)


def aws_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status, headers={"x-amzn-ErrorType": code})


def _gone() -> web.Response:
    return aws_error(410, "GoneException", "")


async def _send(conn: Connection, data: bytes) -> None:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        await conn.ws.send_bytes(data)
    else:
        await conn.ws.send_str(text)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _ConnectionsApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def _live(self, request: web.Request) -> Connection | None:
        conn = self.gateway.connections.get(request.match_info["id"])
        return conn if conn is not None and not conn.ws.closed else None

    async def post(self, request: web.Request) -> web.Response:
        conn = self._live(request)
        if conn is None:
            return _gone()
        data = await request.read()
        limit = self.gateway.limits.max_frame_bytes
        if len(data) > limit:
            return aws_error(413, "PayloadTooLargeException", f"Message too long. Max bytes allowed: {limit}")
        try:
            await _send(conn, data)
        except ConnectionError:
            return _gone()  # closed while we were sending
        conn.touch()
        return web.Response(status=200)

    async def get(self, request: web.Request) -> web.Response:
        conn = self._live(request)
        if conn is None:
            return _gone()
        return web.json_response(
            {
                "connectedAt": _iso(conn.connected_at),
                "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
                "lastActiveAt": _iso(conn.last_active),
            }
        )

    async def delete(self, request: web.Request) -> web.Response:
        conn = self._live(request)
        if conn is None:
            return _gone()
        await self.gateway.close_connection(conn, 1000, "Connection Closed Normally")
        return web.Response(status=204)

    async def faults(self, request: web.Request) -> web.Response:
        return web.json_response({name: proxy.mode for name, proxy in self.gateway.faults.items()})

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            wanted = await request.json()
            if not isinstance(wanted, dict):
                raise ValueError('expected a JSON object such as {"dynamodb": "stall"}')
            unknown = set(wanted) - set(self.gateway.faults)
            if unknown:
                raise ValueError(f"no fault switch for {', '.join(sorted(unknown))}")
            bad = {str(mode) for mode in wanted.values()} - set(MODES)
            if bad:
                raise ValueError(f"unknown mode {', '.join(sorted(bad))}; one of {', '.join(MODES)}")
            for name, mode in wanted.items():
                self.gateway.faults[name].set_mode(str(mode))
        except ValueError as exc:
            return web.json_response({"message": str(exc)}, status=400)
        print(f"Faults:    {json.dumps(wanted)}", flush=True)
        return await self.faults(request)
