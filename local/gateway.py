"""A local API Gateway for the template's WebSocket API, on aiohttp.

One port serves the chat page (``web/``), the WebSocket (``/ws``), the ``@connections``
management API the handlers post frames to, and the fault switch (``/_local/faults``). Each
route invokes its Lambda handler in a worker thread, as API Gateway invokes Lambda: the event
loop never waits on a handler, and messages of one connection may be handled concurrently.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from local import management
from local.events import authorizer_event, connect_event, disconnect_event, message_event
from local.faults import FaultProxy
from local.frames import FrameSizeGuard
from local.lambda_runtime import invoke as lambda_invoke
from local.template import ROOT, Authorizer, Function

Invoke = Callable[[Function, dict[str, Any]], Any]
WEB_DIR = ROOT / "web"
DEFAULT_ROUTE = "$default"
_HOP_BY_HOP = {"connection", "upgrade"}


@dataclass(frozen=True)
class Limits:
    """API Gateway's WebSocket quotas; tests shrink them.

    Incoming: a frame over ``max_frame_bytes`` (``local.frames``) or a message over
    ``max_message_bytes`` (aiohttp, across fragments) closes the socket with 1009. Outgoing: a
    post over ``max_frame_bytes`` is refused with 413. Idle means no data message either way.
    A route's Lambda that has not returned after ``integration_timeout_seconds`` gets the client
    API Gateway's "Endpoint request timed out" message; the Lambda itself keeps running.
    """

    max_message_bytes: int = 128 * 1024
    max_frame_bytes: int = 32 * 1024
    idle_seconds: float = 600.0
    max_connection_seconds: float = 7200.0
    integration_timeout_seconds: float = 29.0


@dataclass
class Connection:
    id: str
    ws: web.WebSocketResponse
    connected_at: float
    source_ip: str
    user_agent: str
    domain_name: str
    last_active: float = field(default_factory=time.time)
    # Set when the gateway closes the socket: the status code and reason $disconnect reports.
    closed_by_gateway: tuple[int, str] | None = None

    @property
    def connected_at_ms(self) -> int:
        return int(self.connected_at * 1000)

    def touch(self) -> None:
        self.last_active = time.time()


def new_connection_id() -> str:
    """API Gateway's shape: 16 base64 characters ending in '=' (URL-safe, it goes in paths)."""
    return base64.urlsafe_b64encode(os.urandom(11)).decode()


def select_route(expression: str, body: str, routes: Mapping[str, Any]) -> str:
    """``$request.body.<path>`` applied to a JSON body; anything that does not name a route
    goes to ``$default``, as in API Gateway."""
    prefix = "$request.body."
    if not expression.startswith(prefix):
        raise ValueError(f"unsupported RouteSelectionExpression {expression!r}")
    try:
        value: Any = json.loads(body)
    except ValueError:
        return DEFAULT_ROUTE
    for key in expression[len(prefix) :].split("."):
        if not isinstance(value, dict):
            return DEFAULT_ROUTE
        value = value.get(key)
    return value if isinstance(value, str) and value in routes else DEFAULT_ROUTE


_CLOSE_NAMES = {
    1000: "NORMAL_CLOSURE",
    1001: "GOING_AWAY",
    1002: "PROTOCOL_ERROR",
    1003: "UNSUPPORTED_DATA",
    1005: "NO_STATUS_CODE",
    1006: "ABNORMAL_CLOSURE",
    1007: "INVALID_PAYLOAD_DATA",
    1008: "POLICY_VIOLATION",
    1009: "MESSAGE_TOO_BIG",
    1011: "INTERNAL_ERROR",
}


_REFUSALS = {401: "Unauthorized", 403: "Forbidden", 500: "Internal server error"}


def _arn_matches(resources: str | list[str], arn: str) -> bool:
    """IAM-style match of a policy's Resource (``*`` wildcards) against the route's ARN."""
    patterns = [resources] if isinstance(resources, str) else resources
    return any(fnmatch.fnmatchcase(arn, pattern) for pattern in patterns)


def client_close_reason(code: int, reason: str) -> str:
    """How API Gateway words a close the client started, in ``disconnectReason``."""
    text = f"Client-side close frame status code '{code}' ({_CLOSE_NAMES.get(code, 'UNKNOWN')})"
    return f"{text} - custom reason: {reason}" if reason else text


class Gateway:
    def __init__(
        self,
        routes: Mapping[str, Function],
        route_selection_expression: str = "$request.body.action",
        *,
        limits: Limits | None = None,
        stage: str = "local",
        web_dir: Path = WEB_DIR,
        faults: Mapping[str, FaultProxy] | None = None,
        invoke: Invoke | None = None,
        workers: int = 32,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.routes = dict(routes)
        self.authorizer = authorizer
        self.expression = route_selection_expression
        self.limits = limits or Limits()
        self.stage = stage
        self.web_dir = web_dir
        self.faults = dict(faults or {})
        self.connections: dict[str, Connection] = {}
        self._invoke = invoke or lambda_invoke
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lambda")
        self._tasks: set[asyncio.Task[None]] = set()
        self._sockets: set[asyncio.Task[Any]] = set()  # the request handlers of open WebSockets

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
        management.add_routes(app, self)
        app.router.add_get("/{path:.*}", self._static)
        return app

    async def close(self) -> None:
        """Close every socket as API Gateway does on a deployment (1001), run their
        $disconnect, let running handlers finish, then stop the workers."""
        await asyncio.gather(
            *(self.close_connection(c, 1001, "Going away") for c in list(self.connections.values()))
        )
        if self._sockets:  # each runs its $disconnect as it ends
            await asyncio.wait(list(self._sockets), timeout=10)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def close_connection(self, conn: Connection, code: int, reason: str) -> None:
        if conn.closed_by_gateway is None:
            conn.closed_by_gateway = (code, reason)
        await conn.ws.close(code=code, message=reason.encode())

    async def invoke(self, route: str, event: dict[str, Any], conn: Connection) -> Any:
        # local.events leaves the identity generic; API Gateway gives the client's user agent.
        event["requestContext"]["identity"]["userAgent"] = conn.user_agent
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._invoke, self.routes[route], event)

    # ---- the WebSocket ------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        # No permessage-deflate: API Gateway does not negotiate it, and limits count wire bytes.
        # aiohttp refuses a message of exactly max_msg_size bytes; API Gateway's limit is inclusive.
        max_msg_size = self.limits.max_message_bytes + 1
        ws = web.WebSocketResponse(max_msg_size=max_msg_size, timeout=2.0, compress=False)
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, text="This is a WebSocket endpoint.\n")
        conn = Connection(
            id=new_connection_id(),
            ws=ws,
            connected_at=time.time(),
            source_ip=request.remote or "127.0.0.1",
            user_agent=request.headers.get("User-Agent", ""),
            domain_name=request.host,
        )
        refused = await self._connect(conn, request)
        if refused is not None:
            return web.json_response({"message": _REFUSALS[refused]}, status=refused)
        await ws.prepare(request)
        self._guard_frames(request, conn)
        self.connections[conn.id] = conn
        this = asyncio.current_task()
        if this is not None:
            self._sockets.add(this)
            this.add_done_callback(self._sockets.discard)
        watchdog = asyncio.create_task(self._watch(conn))
        close: tuple[int, str] = (1006, "Connection closed abnormally")
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    self._spawn(self._message(conn, msg.data, is_base64=False))
                elif msg.type is WSMsgType.BINARY:
                    self._spawn(self._message(conn, base64.b64encode(msg.data).decode(), is_base64=True))
                else:
                    if msg.type is WSMsgType.CLOSE:
                        close = (int(msg.data), client_close_reason(int(msg.data), msg.extra or ""))
                    elif getattr(msg.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG:
                        conn.closed_by_gateway = (1009, "Message too big")
                    break
        finally:
            self.connections.pop(conn.id, None)
            watchdog.cancel()
            await self._disconnect(conn, conn.closed_by_gateway or close)
        return ws

    def _guard_frames(self, request: web.Request, conn: Connection) -> None:
        """Put the frame limit in front of the parser aiohttp installed on upgrade.

        Done right after ``prepare()``, before this task yields: no client frame can have
        reached the parser yet (clients send after the 101, which ``prepare()`` just wrote).
        aiohttp keeps the parser in a private slot; without it only messages are limited.
        """

        def too_big() -> None:
            self._spawn(self.close_connection(conn, 1009, "Message too big"))

        parser = getattr(request.protocol, "_payload_parser", None)
        if parser is None:
            print("warning: this aiohttp hides its WebSocket parser: frame sizes are not checked", flush=True)
            return
        setattr(  # noqa: B010 - a private slot, see above
            request.protocol, "_payload_parser", FrameSizeGuard(parser, self.limits.max_frame_bytes, too_big)
        )

    async def _connect(self, conn: Connection, request: web.Request) -> int | None:
        """Run the authorizer and $connect; ``None`` accepts, a status refuses the handshake."""
        if "$connect" not in self.routes:
            return None
        # As API Gateway passes them: without hop-by-hop headers, with the X-Forwarded-* it adds.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        headers.update(
            {
                "X-Forwarded-For": conn.source_ip,
                "X-Forwarded-Port": str(sockname[1]) if sockname else "80",
                "X-Forwarded-Proto": request.scheme,
            }
        )
        event = connect_event(
            conn.id,
            query=dict(request.query) or None,
            headers=headers,
            domain_name=conn.domain_name,
            stage=self.stage,
            connected_at_ms=conn.connected_at_ms,
            source_ip=conn.source_ip,
        )
        if self.authorizer is not None:
            verdict = await self._authorize(event, conn)
            if isinstance(verdict, int):
                return verdict
            event["requestContext"]["authorizer"] = verdict
        try:
            result = await self.invoke("$connect", event, conn)
        except Exception as exc:
            print(f"$connect failed: {exc!r}", flush=True)
            return 403
        status = result.get("statusCode", 200) if isinstance(result, dict) else 200
        return None if 200 <= int(status) < 300 else 403

    async def _authorize(self, connect: dict[str, Any], conn: Connection) -> dict[str, Any] | int:
        """API Gateway's REQUEST authorizer: 401 when an identity source is missing (the
        authorizer is not called), 403 on Deny, 500 when it fails; otherwise the
        ``requestContext.authorizer`` the $connect handler sees."""
        assert self.authorizer is not None
        for source in self.authorizer.identity_sources:
            kind, _, name = source.removeprefix("route.request.").partition(".")
            values = connect.get("queryStringParameters") if kind == "querystring" else connect["headers"]
            if not (values or {}).get(name):
                return 401
        event = authorizer_event(connect)
        event["requestContext"]["identity"]["userAgent"] = conn.user_agent
        loop = asyncio.get_running_loop()
        try:
            policy = await loop.run_in_executor(self._pool, self._invoke, self.authorizer.function, event)
            statements = policy["policyDocument"]["Statement"]
            allowed = any(
                s["Effect"] == "Allow" and _arn_matches(s["Resource"], event["methodArn"]) for s in statements
            ) and not any(
                s["Effect"] == "Deny" and _arn_matches(s["Resource"], event["methodArn"]) for s in statements
            )
        except Exception as exc:
            print(f"authorizer failed: {exc!r}", flush=True)
            return 500
        if not allowed:
            return 403
        return {"principalId": policy["principalId"], **policy.get("context", {}), "integrationLatency": 0}

    async def _message(self, conn: Connection, body: str, *, is_base64: bool) -> None:
        conn.touch()
        route = DEFAULT_ROUTE if is_base64 else select_route(self.expression, body, self.routes)
        event = message_event(
            conn.id,
            route,
            body,
            domain_name=conn.domain_name,
            stage=self.stage,
            connected_at_ms=conn.connected_at_ms,
            source_ip=conn.source_ip,
            is_base64=is_base64,
        )
        request_id = event["requestContext"]["requestId"]
        if route not in self.routes:
            await self._reply_error(conn, "Forbidden", request_id)
            return
        invocation = asyncio.ensure_future(self.invoke(route, event, conn))
        # API Gateway stops waiting after the integration timeout and tells the client so;
        # the Lambda is not stopped: it runs to its own timeout, still posting frames.
        done, _ = await asyncio.wait({invocation}, timeout=self.limits.integration_timeout_seconds)
        if not done:
            await self._reply_error(conn, "Endpoint request timed out", request_id)
        try:
            await invocation
        except Exception as exc:
            print(f"{route} failed: {exc!r}", flush=True)
            if done:
                await self._reply_error(conn, "Internal server error", request_id)

    async def _reply_error(self, conn: Connection, message: str, request_id: str) -> None:
        """What API Gateway itself sends when a route cannot be served."""
        if not conn.ws.closed:
            payload = {"message": message, "connectionId": conn.id, "requestId": request_id}
            await conn.ws.send_str(json.dumps(payload))

    async def _disconnect(self, conn: Connection, close: tuple[int, str]) -> None:
        if "$disconnect" not in self.routes:
            return
        event = disconnect_event(
            conn.id,
            status_code=close[0],
            reason=close[1],
            domain_name=conn.domain_name,
            stage=self.stage,
            connected_at_ms=conn.connected_at_ms,
            source_ip=conn.source_ip,
        )
        try:
            await self.invoke("$disconnect", event, conn)
        except Exception as exc:
            print(f"$disconnect failed: {exc!r}", flush=True)

    async def _watch(self, conn: Connection) -> None:
        """Close the socket after the idle timeout or the connection's maximum duration."""
        limits = self.limits
        while True:
            now = time.time()
            idle_left = conn.last_active + limits.idle_seconds - now
            life_left = conn.connected_at + limits.max_connection_seconds - now
            if min(idle_left, life_left) <= 0:
                # In a task of its own: this watchdog is cancelled once the socket is closed.
                self._spawn(self.close_connection(conn, 1001, "Going away"))
                return
            await asyncio.sleep(min(idle_left, life_left))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- the page -----------------------------------------------------------------------

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["path"] or "index.html"
        root = self.web_dir.resolve()
        path = (root / name).resolve()
        if path.is_relative_to(root) and path.is_file():
            return web.FileResponse(path)
        if name == "index.html":
            return web.Response(text="The chat page is not there yet: web/index.html is missing.\n")
        raise web.HTTPNotFound()
