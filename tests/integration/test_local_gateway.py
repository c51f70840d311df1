"""The local API Gateway on a real port: the events it gives Lambda, route selection, API
Gateway's limits and the @connections API through the ordinary boto3 client.

The Lambdas here are recorders (they keep each event and answer 200) so the events can be
inspected; the stack's own e2e tests run the template's real handlers.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from apigw_websocket import ConnectEvent, DisconnectEvent, MessageEvent
from botocore.config import Config
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from local.events import authorizer_event, connect_event
from local.faults import FaultProxy
from local.frames import FrameSizeGuard
from local.gateway import Gateway, Limits, select_route
from local.stack import Dependencies
from local.template import ROOT, Function, load_template

TIMEOUT = 5.0
CONNECTION_ID = re.compile(r"^[A-Za-z0-9_-]{15}=$")


class Lambdas:
    """Stands in for every route's function: records events, answers as told."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.connect_status = 200
        self.on_message: Callable[[dict[str, Any]], None] | None = None
        self._changed = threading.Condition()

    def __call__(self, function: Function, event: dict[str, Any]) -> dict[str, Any]:
        route = event["requestContext"]["routeKey"]
        if route not in ("$connect", "$disconnect") and self.on_message is not None:
            self.on_message(event)
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        return {"statusCode": self.connect_status if route == "$connect" else 200}

    def wait_for(self, route: str, connection_id: str | None = None) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for event in self.events:
                ctx = event["requestContext"]
                if ctx["routeKey"] == route and connection_id in (None, ctx["connectionId"]):
                    return event
            return None

        with self._changed:
            assert self._changed.wait_for(lambda: found() is not None, TIMEOUT), (route, self.events)
            event = found()
            assert event is not None
            self.events.remove(event)
            return event


class Running:
    """A gateway served on a free port by an event loop in a thread."""

    def __init__(self, gateway: Gateway) -> None:
        from aiohttp import web

        self.gateway = gateway
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        self.runner = web.AppRunner(gateway.app(), access_log=None)
        self._run(self.runner.setup())
        self._run(web.SockSite(self.runner, sock).start())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def management(self, path: str = "") -> Any:
        return boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=f"http://127.0.0.1:{self.port}{path}",
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}),
        )

    def stop(self) -> None:
        self._run(self.gateway.close())
        self._run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


@pytest.fixture
def lambdas() -> Lambdas:
    return Lambdas()


@pytest.fixture
def serve(lambdas: Lambdas) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(limits: Limits | None = None, **kwargs: Any) -> Running:
        template = load_template()
        gateway = Gateway(
            template.routes(), template.route_selection_expression(), limits=limits, invoke=lambdas, **kwargs
        )
        started.append(Running(gateway))
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def gateway(serve: Callable[..., Running]) -> Running:
    return serve()


def open_socket(gateway: Running, query: str = "", user_agent: str | None = None) -> ClientConnection:
    if user_agent is None:
        return connect(gateway.ws_url + query, open_timeout=TIMEOUT)
    return connect(gateway.ws_url + query, open_timeout=TIMEOUT, user_agent_header=user_agent)


@contextmanager
def connected(gateway: Running, lambdas: Lambdas, query: str = "") -> Iterator[tuple[ClientConnection, str]]:
    """An open socket and its connection id."""
    with open_socket(gateway, query) as ws:
        yield ws, str(lambdas.wait_for("$connect")["requestContext"]["connectionId"])


# ---- events ------------------------------------------------------------------------------


def test_events_are_what_powertools_parses(gateway: Running, lambdas: Lambdas) -> None:
    with open_socket(gateway, "?session_id=abc", user_agent="tests/1.0") as ws:
        connect_event = lambdas.wait_for("$connect")
        ws.send(json.dumps({"action": "sendMessage", "message": "hi"}))
        message_event = lambdas.wait_for("sendMessage")
        ws.close(code=1000, reason="bye")
    disconnect_event = lambdas.wait_for("$disconnect")

    on_connect = ConnectEvent.model_validate(connect_event)
    on_message = MessageEvent.model_validate(message_event)
    on_disconnect = DisconnectEvent.model_validate(disconnect_event)

    connection_id = on_connect.request_context.connection_id
    assert CONNECTION_ID.match(connection_id)
    assert (
        on_message.request_context.connection_id
        == on_disconnect.request_context.connection_id
        == connection_id
    )
    assert on_connect.query_string_parameters == {"session_id": "abc"}
    assert on_connect.headers["User-Agent"] == on_connect.request_context.identity.user_agent == "tests/1.0"
    assert on_connect.headers["X-Forwarded-For"] == "127.0.0.1" and "Upgrade" not in on_connect.headers
    assert on_connect.request_context.event_type == "CONNECT"
    assert (
        on_message.request_context.route_key == "sendMessage"
        and on_message.body == '{"action": "sendMessage", "message": "hi"}'
    )
    assert on_disconnect.request_context.disconnect_status_code == 1000
    assert on_disconnect.request_context.disconnect_reason == (
        "Client-side close frame status code '1000' (NORMAL_CLOSURE) - custom reason: bye"
    )
    assert on_connect.request_context.stage == "local"
    assert connect_event["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"


# The API-Gateway-shaped route events among events/*.json (env.json is not an event; the
# authorizer's input is compared on its own below).
SAMPLES = sorted(
    p
    for p in (ROOT / "events").glob("*.json")
    if "requestContext" in (sample := json.loads(p.read_text())) and "methodArn" not in sample
)


def test_the_authorizer_event_has_the_keys_of_its_sample() -> None:
    expected = json.loads((ROOT / "events" / "authorizer.json").read_text())
    ours = authorizer_event(connect_event("abc=", query={"session_id": "s"}))
    assert sorted(ours) == sorted(expected)
    assert sorted(ours["requestContext"]) == sorted(expected["requestContext"])
    assert ours["methodArn"].endswith("/local/$connect")


@pytest.mark.skipif(not SAMPLES, reason="no events/*.json samples to compare with yet")
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_events_have_the_keys_of_the_samples(sample: Path, gateway: Running, lambdas: Lambdas) -> None:
    expected = json.loads(sample.read_text())
    kind = expected["requestContext"]["eventType"]
    with open_socket(gateway, "?session_id=abc" if expected.get("queryStringParameters") else "") as ws:
        events = {"CONNECT": lambdas.wait_for("$connect")}
        body = expected["body"] if kind == "MESSAGE" else '{"action": "getSession"}'
        ws.send(body)
        events["MESSAGE"] = lambdas.wait_for(
            select_route("$request.body.action", body, gateway.gateway.routes)
        )
    events["DISCONNECT"] = lambdas.wait_for("$disconnect")

    ours = events[kind]
    assert sorted(ours) == sorted(expected)
    # A sample may carry an authorizer's context, as API Gateway passes it once one ran; this
    # gateway runs without one (the authorizer's events are compared on their own).
    context = sorted(
        k for k in expected["requestContext"] if k != "authorizer" or "authorizer" in ours["requestContext"]
    )
    assert sorted(ours["requestContext"]) == context


# ---- routes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "route"),
    [
        ('{"action": "getSession"}', "getSession"),
        ('{"action": "sendMessage", "message": "x"}', "sendMessage"),
        ('{"action": "dance"}', "$default"),
        ('{"action": 5}', "$default"),
        ('{"message": "no action"}', "$default"),
        ('["action", "getSession"]', "$default"),
        ("not json", "$default"),
        ("", "$default"),
    ],
)
def test_route_selection(body: str, route: str) -> None:
    routes = load_template().routes()
    assert select_route(load_template().route_selection_expression(), body, routes) == route


def test_each_message_invokes_the_route_it_selects(gateway: Running, lambdas: Lambdas) -> None:
    with open_socket(gateway) as ws:
        for body in ('{"action": "getSession"}', "not json", '{"action": "dance"}'):
            ws.send(body)
            route = select_route("$request.body.action", body, gateway.gateway.routes)
            assert lambdas.wait_for(route)["body"] == body


def test_a_refused_connect_is_a_403_without_upgrade(gateway: Running, lambdas: Lambdas) -> None:
    lambdas.connect_status = 500
    with pytest.raises(InvalidStatus) as refused, open_socket(gateway):
        pass
    assert refused.value.response.status_code == 403
    assert not gateway.gateway.connections


def test_a_failing_handler_gets_api_gateways_error_frame(gateway: Running, lambdas: Lambdas) -> None:
    def fail(event: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    lambdas.on_message = fail
    with open_socket(gateway) as ws:
        ws.send('{"action": "getSession"}')
        frame = json.loads(ws.recv(timeout=TIMEOUT))
    assert frame["message"] == "Internal server error" and frame["requestId"] and frame["connectionId"]


# ---- limits ------------------------------------------------------------------------------


def test_frames_within_the_limits_are_delivered(serve: Callable[..., Running], lambdas: Lambdas) -> None:
    gateway = serve(Limits(max_frame_bytes=100, max_message_bytes=1000))
    with connected(gateway, lambdas) as (ws, _):
        ws.send("x" * 100)  # one frame, at the frame limit
        assert lambdas.wait_for("$default")["body"] == "x" * 100
        ws.send(["y" * 100] * 10)  # ten frames of one message, at the message limit
        assert lambdas.wait_for("$default")["body"] == "y" * 1000


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("x" * 101, id="a frame over 32 KB"),
        pytest.param(["y" * 100] * 11, id="a message over 128 KB"),
    ],
)
def test_too_big_closes_with_1009(serve: Callable[..., Running], lambdas: Lambdas, message: Any) -> None:
    gateway = serve(Limits(max_frame_bytes=100, max_message_bytes=1000))
    with connected(gateway, lambdas) as (ws, connection_id), pytest.raises(ConnectionClosed) as closed:
        ws.send(message)
        ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    disconnect = lambdas.wait_for("$disconnect", connection_id)["requestContext"]
    assert (disconnect["disconnectStatusCode"], disconnect["disconnectReason"]) == (1009, "Message too big")
    assert not [e for e in lambdas.events if e["requestContext"]["routeKey"] == "$default"]


@pytest.mark.parametrize(
    "limits",
    [Limits(idle_seconds=0.3), Limits(max_connection_seconds=0.4)],
    ids=["idle", "max-duration"],
)
def test_idle_and_old_connections_go_away(
    serve: Callable[..., Running], lambdas: Lambdas, limits: Limits
) -> None:
    gateway = serve(limits)
    with connected(gateway, lambdas) as (ws, connection_id), pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "Going away")
    disconnect = lambdas.wait_for("$disconnect", connection_id)["requestContext"]
    assert (disconnect["disconnectStatusCode"], disconnect["disconnectReason"]) == (1001, "Going away")


def test_activity_keeps_a_connection_open(serve: Callable[..., Running], lambdas: Lambdas) -> None:
    idle = 2.0
    gateway = serve(Limits(idle_seconds=idle))
    client = gateway.management()
    with connected(gateway, lambdas) as (ws, connection_id):
        # Active for twice the idle timeout (the loop's bound, not an assertion), never idle
        # for long: each message waits only for its own delivery.
        began = time.monotonic()
        while time.monotonic() - began < 2 * idle:
            ws.send('{"action": "getSession"}')
            lambdas.wait_for("getSession")
        # still open: a closed one answers 410 (GoneException)
        assert client.get_connection(ConnectionId=connection_id)["ConnectedAt"]


# ---- @connections --------------------------------------------------------------------------


def test_connections_api_posts_describes_and_deletes(gateway: Running, lambdas: Lambdas) -> None:
    client = gateway.management()
    with connected(gateway, lambdas) as (ws, connection_id):
        client.post_to_connection(ConnectionId=connection_id, Data=b'{"type": "notice"}')
        assert ws.recv(timeout=TIMEOUT) == '{"type": "notice"}'  # a text frame

        described = client.get_connection(ConnectionId=connection_id)
        assert described["Identity"]["SourceIp"] == "127.0.0.1"
        assert described["ConnectedAt"] <= described["LastActiveAt"]

        client.delete_connection(ConnectionId=connection_id)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert lambdas.wait_for("$disconnect", connection_id)["requestContext"]["disconnectStatusCode"] == 1000


@pytest.mark.parametrize("stage", ["", "/local"])
def test_a_closed_connection_is_gone_for_boto3(gateway: Running, lambdas: Lambdas, stage: str) -> None:
    client = gateway.management(stage)
    with connected(gateway, lambdas) as (ws, connection_id):
        client.post_to_connection(ConnectionId=connection_id, Data=b"{}")
        assert ws.recv(timeout=TIMEOUT) == "{}"
    lambdas.wait_for("$disconnect", connection_id)

    with pytest.raises(client.exceptions.GoneException):
        client.post_to_connection(ConnectionId=connection_id, Data=b"{}")
    with pytest.raises(client.exceptions.GoneException):
        client.get_connection(ConnectionId=connection_id)
    with pytest.raises(client.exceptions.GoneException):
        client.delete_connection(ConnectionId=connection_id)
    with pytest.raises(client.exceptions.GoneException):
        client.post_to_connection(ConnectionId="NeverConnected=", Data=b"{}")


def test_a_frame_over_32_kb_is_payload_too_large(serve: Callable[..., Running], lambdas: Lambdas) -> None:
    gateway = serve(Limits(max_frame_bytes=100))
    client = gateway.management()
    with connected(gateway, lambdas) as (ws, connection_id):
        client.post_to_connection(ConnectionId=connection_id, Data=b"y" * 100)
        assert ws.recv(timeout=TIMEOUT) == "y" * 100
        with pytest.raises(client.exceptions.PayloadTooLargeException):
            client.post_to_connection(ConnectionId=connection_id, Data=b"y" * 101)


# ---- faults ------------------------------------------------------------------------------


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass  # the proxy dropped us
        finally:
            writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def _round_trip(port: int) -> bytes:
    """What comes back for b"ping": b"" when the connection is closed (FIN or reset)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"ping")
        await writer.drain()
        return await asyncio.wait_for(reader.read(4), 0.3)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def test_the_fault_proxy_passes_stalls_and_refuses() -> None:
    async def scenario() -> None:
        server = await _echo_server()
        proxy = await FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1]).start()
        try:
            assert await _round_trip(proxy.port) == b"ping"
            proxy.set_mode("stall")
            with pytest.raises(TimeoutError):
                await _round_trip(proxy.port)
            proxy.set_mode("refuse")
            assert await _round_trip(proxy.port) == b""  # closed at once
            proxy.set_mode("pass")
            assert await _round_trip(proxy.port) == b"ping"
            with pytest.raises(ValueError, match="unknown fault mode"):
                proxy.set_mode("flaky")
        finally:
            await proxy.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_the_fault_switch_over_http(serve: Callable[..., Running]) -> None:
    import urllib.error
    import urllib.request

    proxy = FaultProxy("127.0.0.1", 9)  # never dialled: only its mode is switched here
    gateway = serve(faults={"dynamodb": proxy})
    url = f"http://127.0.0.1:{gateway.port}/_local/faults"

    def post(body: object) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    assert post({"dynamodb": "stall"}) == (200, {"dynamodb": "stall"})
    assert proxy.mode == "stall"
    assert post({"dynamodb": "sideways"})[0] == 400
    assert post({"redis": "stall"})[0] == 400
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        assert json.loads(response.read()) == {"dynamodb": "stall"}


# ---- the handlers' environment -------------------------------------------------------------


def test_the_handlers_environment() -> None:
    deps = Dependencies(
        dynamodb_url="http://127.0.0.1:4566",
        tables={"ChatSessionsTable": "ChatSessions", "ConnectionsTable": "ChatConnections"},
    )
    caller = {
        "POWERTOOLS_LOG_LEVEL": "DEBUG",
        "REDIS_URL": "redis://elsewhere:6379/0",
        "DYNAMODB_ENDPOINT_URL": "x",
    }

    env = deps.environment("http://127.0.0.1:8080", caller)

    assert env["POWERTOOLS_SERVICE_NAME"] == "chat-memory"  # a plain value of the template
    assert env["POWERTOOLS_LOG_LEVEL"] == "DEBUG"  # the caller's environment wins over it
    assert "LLM__PROVIDER" not in env and "LLM__API_KEY_SECRET_NAME" not in env  # intrinsics: left out
    assert all(value != "" for value in env.values())
    assert "REDIS_URL" not in env  # the cache is off: no URL for the handlers
    assert env["SESSIONS_TABLE"] == "ChatSessions" and env["CONNECTIONS_TABLE"] == "ChatConnections"
    assert env["DYNAMODB_ENDPOINT_URL"] == "http://127.0.0.1:4566"  # local endpoints win
    assert env["CONNECTIONS_ENDPOINT_URL"] == "http://127.0.0.1:8080"
    assert float(env["LLM__OFFLINE_DELAY_SECONDS"]) > 0

    deps.redis_url = "redis://127.0.0.1:6379/0"
    assert deps.environment("http://127.0.0.1:8080", caller)["REDIS_URL"] == "redis://127.0.0.1:6379/0"


def _frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """A masked client frame (the mask is zero, so the payload reads as it is)."""
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return bytes([(0x80 if fin else 0) | opcode]) + length + b"\0\0\0\0" + payload


@pytest.mark.parametrize("chunk", [1, 3, 4096], ids=["byte by byte", "3 bytes", "whole"])
def test_the_frame_guard_reads_headers_across_chunks(chunk: int) -> None:
    class Parser:
        fed = b""

        def feed_data(self, data: bytes) -> tuple[bool, bytes]:
            self.fed += data
            return False, b""

    parser, tripped = Parser(), []
    guard = FrameSizeGuard(parser, 200, lambda: tripped.append(True))
    small, medium, big, close = _frame(b"a" * 5), _frame(b"b" * 200), _frame(b"c" * 201), _frame(b"", 0x8)
    stream = small + medium + big + close
    for i in range(0, len(stream), chunk):
        guard.feed_data(stream[i : i + chunk])

    assert parser.fed == small + medium + close  # the oversize frame is dropped, the rest passes
    assert tripped == [True]
