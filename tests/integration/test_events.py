"""Every function of template.yaml with its sample in events/, through the real SAM CLI in a
real container: ``make invoke`` (``sam local invoke --skip-pull-image``, README's "One function
in Docker"), with ``events/env.json`` pointed at this test's moto server (DynamoDB and the
@connections API) and its own redis-server, both listening where the container reaches them.

``sam local invoke`` exits 0 when the handler raises, so each invocation is judged by its
answer (no ``errorType``), its status code and its effect: the frames posted to the connection,
the items in DynamoDB. The route samples are one conversation on one connection.

Needs Docker, the SAM CLI in $SAM_VENV and the Lambda image (``make docker`` starts the daemon
and builds a stand-in image where public.ecr.aws cannot be reached); ``make test`` does all of it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pytest
import redis
from apigw_websocket import ConnectEvent, DisconnectEvent, MessageEvent
from boto3.dynamodb.conditions import Key
from chatmemory.storage.bindings import binding_key

from local.template import ROOT, Function, create_tables, load_template
from tests.support.frames import clear_frames, frames_sent, reply_text
from tests.support.processes import MotoHttpServer, RedisProcess

EVENTS = ROOT / "events"
ENV_FILE = EVENTS / "env.json"
SAM = ROOT / os.environ.get("SAM_VENV", ".tools/sam") / "bin" / "sam"
LOCAL_HOST = "host.docker.internal"  # --add-host host.docker.internal:host-gateway
MAKE = ["make", "-s", "--no-print-directory", f"SAM_VENV={SAM.parent.parent}"]

# The route samples, in the order of the conversation they make.
CONVERSATION = [
    "connect.json",
    "get_session.json",
    "send_message.json",
    "set_memory.json",
    "get_user_memory.json",
    "forget_user_memory.json",
    "list_sessions.json",
    "rename_session.json",
    "open_session.json",
    "stop_reply.json",
    "export_session.json",
    "new_session.json",
    "delete_session.json",
    "delete_my_data.json",
    "default.json",
    "default_not_json.json",
    "disconnect.json",
]
# The functions no route invokes, and the sample of what invokes them.
NOT_ROUTES = {
    "AuthorizerFunction": "authorizer.json",  # API Gateway's REQUEST authorizer on $connect
    "SummarizeFunction": "summarize.json",  # sendMessage, asynchronously
    "OutboxReplayFunction": "outbox_replay.json",  # the turn outbox's SQS event source
}
MODELS: dict[str, type[ConnectEvent | MessageEvent | DisconnectEvent]] = {
    "CONNECT": ConnectEvent,
    "MESSAGE": MessageEvent,
    "DISCONNECT": DisconnectEvent,
}


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((EVENTS / name).read_text()))


def env_file() -> dict[str, dict[str, str]]:
    return dict(json.loads(ENV_FILE.read_text()))


def route_samples() -> list[Path]:
    return [EVENTS / name for name in CONVERSATION]


def declared_variables(function: Function) -> set[str]:
    """Globals' variables and the function's own: the only ones sam local lets --env-vars set."""
    raw = load_template().raw
    glob = raw.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    own = raw["Resources"][function.logical_id]["Properties"].get("Environment", {}).get("Variables", {})
    return {*glob, *own}


# ---- the files --------------------------------------------------------------------------------


def test_every_function_has_its_sample() -> None:
    template = load_template()
    by_route = {name: route_for_sample(load(name)) for name in CONVERSATION}
    covered = {template.routes()[route].logical_id for route in by_route.values()} | set(NOT_ROUTES)
    assert covered == set(template.functions())
    assert set(by_route.values()) == set(template.routes())
    every_file = {p.name for p in EVENTS.glob("*.json")} - {ENV_FILE.name}
    assert every_file == set(CONVERSATION) | set(NOT_ROUTES.values())


def route_for_sample(event: dict[str, Any]) -> str:
    return str(event["requestContext"]["routeKey"])


@pytest.mark.parametrize("sample", route_samples(), ids=lambda p: p.name)
def test_samples_are_what_api_gateway_sends_and_powertools_parses(sample: Path) -> None:
    event = json.loads(sample.read_text())
    context = event["requestContext"]
    parsed = MODELS[context["eventType"]].model_validate(event)
    assert parsed.request_context.route_key in load_template().routes()
    assert context["domainName"] == f"{context['apiId']}.execute-api.us-east-1.amazonaws.com"
    assert context["messageDirection"] == "IN" and context["stage"]
    if context["eventType"] == "MESSAGE":
        assert set(event) == {"requestContext", "body", "isBase64Encoded"}
        assert context["routeKey"] == route_for(event["body"])
    else:
        assert {"headers", "multiValueHeaders"} <= set(event)
        assert event["multiValueHeaders"] == {k: [v] for k, v in event["headers"].items()}


def route_for(body: str) -> str:
    """API Gateway's route selection on $request.body.action."""
    try:
        action = json.loads(body).get("action")
    except (ValueError, AttributeError):
        return "$default"
    return action if action in load_template().routes() else "$default"


def test_all_samples_are_one_connection() -> None:
    ids = {load(name)["requestContext"]["connectionId"] for name in [*CONVERSATION, "authorizer.json"]}
    assert len(ids) == 1


def test_env_file_only_sets_variables_the_template_declares() -> None:
    """sam local ignores a variable the template does not declare for the function."""
    overrides = env_file()
    functions = load_template().functions()
    assert set(overrides) == {"Parameters", *functions}
    declared_by_all = set.intersection(*(declared_variables(f) for f in functions.values()))
    assert set(overrides["Parameters"]) <= declared_by_all
    for name, function in functions.items():
        assert set(overrides[name]) <= declared_variables(function), name
    for section in overrides.values():
        assert all(isinstance(v, str) for v in section.values())


def test_env_file_points_every_function_at_local_endpoints() -> None:
    common = env_file()["Parameters"]
    assert common["LLM__PROVIDER"] == "offline"
    assert common["DYNAMODB_ENDPOINT_URL"].startswith(f"http://{LOCAL_HOST}:")
    assert common["CONNECTIONS_ENDPOINT_URL"].startswith(f"http://{LOCAL_HOST}:")
    assert common["REDIS_URL"].startswith(f"redis://{LOCAL_HOST}:")
    assert common["SESSIONS_TABLE"] and common["CONNECTIONS_TABLE"]


# ---- in Docker --------------------------------------------------------------------------------


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def docker_bridge_address() -> str:
    """The host's address on Docker's default bridge: where host-gateway leads a container."""
    out = subprocess.run(
        ["docker", "network", "inspect", "bridge", "--format", "{{json .}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    (network,) = json.loads(out.stdout) if out.stdout.lstrip().startswith("[") else [json.loads(out.stdout)]
    gateway = next((c["Gateway"] for c in network["IPAM"]["Config"] if c.get("Gateway")), None)
    if gateway:
        return str(gateway)
    # The daemon's own bridge (docker0) leaves Gateway out: its interface's address is it.
    name = network["Options"].get("com.docker.network.bridge.name", "docker0").encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("256s", name[:15])
        return socket.inet_ntoa(fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)[20:24])


SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address
# Listening on the bridge too; protected mode would answer containers (not loopback) DENIED.
REDIS_ON_BRIDGE = ("--protected-mode", "no", "--bind", "127.0.0.1")


@dataclass
class Invocation:
    response: Any
    logs: str


class SamLocal:
    """``make invoke`` of one function with one event, against this test's moto and Redis."""

    def __init__(self, env_vars: Path, tmp: Path) -> None:
        self.env_vars, self.tmp = env_vars, tmp
        self.last_logs = ""  # of the last invocation, for the assertion messages

    def invoke(self, function: str, event: Path | dict[str, Any]) -> Invocation:
        if isinstance(event, dict):
            path = self.tmp / f"{function}.json"
            path.write_text(json.dumps(event))
            event = path
        done = subprocess.run(
            [*MAKE, "invoke", f"FUNCTION={function}", f"EVENT={event}", f"ENV_VARS={self.env_vars}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"{function}: sam local invoke failed\n{done.stdout}\n{done.stderr}"
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        assert lines, f"{function}: no answer\n{done.stderr}"
        response = json.loads(lines[-1])  # SAM prints the function's answer last, alone
        # A handler that raised: sam local invoke still exits 0, with Lambda's error answer.
        assert not (isinstance(response, dict) and "errorType" in response), (
            f"{function} failed: {response}\n{done.stderr}"
        )
        self.last_logs = done.stderr
        return Invocation(response, done.stderr)


@pytest.fixture(scope="module")
def in_docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SamLocal, Any, Any, str]]:
    """moto and a redis-server on Docker's bridge, the tables, an env file pointing at them,
    and the stack built for sam local (``make local-build``)."""
    if not (SAM.exists() and docker_answers()):
        if os.environ.get("CI"):
            pytest.fail("CI needs Docker and the SAM CLI: make test runs make docker and make sam-cli")
        pytest.skip("no Docker daemon or no SAM CLI (make docker sam-cli)")
    bridge = docker_bridge_address()
    built = subprocess.run(
        [*MAKE, "local-build"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert built.returncode == 0, f"make local-build failed\n{built.stdout}\n{built.stderr}"
    with (
        MotoHttpServer(host=bridge) as moto,
        RedisProcess(extra_args=(*REDIS_ON_BRIDGE, bridge)) as cache,
    ):
        overrides = env_file()
        common = overrides["Parameters"]
        common["DYNAMODB_ENDPOINT_URL"] = f"http://{LOCAL_HOST}:{moto.port}"
        common["CONNECTIONS_ENDPOINT_URL"] = f"http://{LOCAL_HOST}:{moto.port}"  # moto's @connections
        common["REDIS_URL"] = f"redis://{LOCAL_HOST}:{cache.port}/0"
        tmp = tmp_path_factory.mktemp("sam-local")
        env_vars = tmp / "env.json"
        env_vars.write_text(json.dumps(overrides))
        dynamodb = boto3.resource("dynamodb", endpoint_url=moto.url, region_name="us-east-1")
        names = {
            "ChatSessionsTable": common["SESSIONS_TABLE"],
            "ConnectionsTable": common["CONNECTIONS_TABLE"],
        }
        create_tables(dynamodb, names)
        tables = {logical_id: dynamodb.Table(name) for logical_id, name in names.items()}
        yield SamLocal(env_vars, tmp), tables, redis.Redis.from_url(cache.url), moto.url


def posted(connection_id: str) -> list[dict[str, Any]]:
    """The frames moto's server took for the connection (keyed as in the request path)."""
    return frames_sent(quote(connection_id, safe=""))


class Connection:
    """The route samples' connection: each sample through its route's function, in a container."""

    def __init__(self, sam: SamLocal) -> None:
        self.sam = sam
        self.id = load("connect.json")["requestContext"]["connectionId"]
        self.seen = 0
        clear_frames(quote(self.id, safe=""))

    def route(self, sample: str, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """200, and the frames the function posted; no error frame unless the sample is $default's.
        ``body``: fields to set in the sample's frame (what only this conversation knows)."""
        event = load(sample)
        function = load_template().routes()[event["requestContext"]["routeKey"]].logical_id
        sent: Path | dict[str, Any] = EVENTS / sample
        if body is not None:
            sent = {**event, "body": json.dumps({**json.loads(event["body"]), **body})}
        assert self.sam.invoke(function, sent).response == {"statusCode": 200}, sample
        frames = posted(self.id)[self.seen :]
        self.seen += len(frames)
        if not sample.startswith("default"):
            assert not [f for f in frames if f["type"] == "error"], (
                f"{sample}: {frames}\n{self.sam.last_logs}"
            )
        return frames


pytestmark = [pytest.mark.timeout(1800)]


@pytest.mark.slow
def test_the_authorizer_sample_makes_a_guest_in_a_container(
    in_docker: tuple[SamLocal, Any, Any, str],
) -> None:
    """No ?token=: a new guest, allowed on $connect, its signed token in the context."""
    sam = in_docker[0]
    policy = sam.invoke("AuthorizerFunction", EVENTS / "authorizer.json").response
    assert policy["principalId"].startswith("guest:")
    assert policy["context"]["principal"] == policy["principalId"] and policy["context"]["guestToken"]
    (statement,) = policy["policyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Resource"] == [load("authorizer.json")["methodArn"]]


@pytest.mark.slow
def test_the_route_samples_hold_a_conversation_in_a_container(
    in_docker: tuple[SamLocal, Any, Any, str],
) -> None:
    sam, tables, cache, _ = in_docker
    sessions, connections = tables["ChatSessionsTable"], tables["ConnectionsTable"]
    connection = Connection(sam)

    # $connect: the connection bound, for the authorizer's principal, to a new session (the
    # requested one has no turns), in DynamoDB and in Redis
    connect = load("connect.json")
    assert connection.route("connect.json") == []
    binding = connections.get_item(Key={"connection_id": connection.id})["Item"]
    session_id = str(binding["session_id"])
    assert session_id != connect["queryStringParameters"]["session_id"]
    assert binding["principal"] == connect["requestContext"]["authorizer"]["principalId"]
    assert cache.get(binding_key(connection.id)) is not None, sam.last_logs

    # getSession: the session frame
    (frame,) = connection.route("get_session.json")
    assert frame["type"] == "session" and frame["sessionId"] == session_id and frame["history"] == []

    # sendMessage: deltas, then done; the turn is stored with its reply
    frames = connection.route("send_message.json")
    assert [f["type"] for f in frames] == ["delta"] * (len(frames) - 1) + ["done"] and len(frames) >= 2
    assert frames[-1]["turn"] == 1
    turn_items = Key("session_id").eq(session_id) & Key("turn_number").gt(0)  # 0: the listing
    (item,) = sessions.query(KeyConditionExpression=turn_items)["Items"]
    body = json.loads(load("send_message.json")["body"])
    assert item["user_message"] == body["message"] and item["client_message_id"] == body["clientMessageId"]
    assert item["assistant_reply"] == reply_text(frames) and item["status"] == "complete"

    # summarize (what sendMessage schedules, for this session): its memory read and brought up to date
    summarize = {**load("summarize.json"), "sessionId": session_id}
    assert set(sam.invoke("SummarizeFunction", summarize).response) == {"updated"}

    # setMemory, getUserMemory, forgetUserMemory: memory and userMemory frames
    (memory,) = connection.route("set_memory.json")
    assert memory["type"] == "memory" and memory["memoryStrategy"] == "window" and memory["longTerm"] is True
    assert {f["type"] for f in connection.route("get_user_memory.json")} == {"userMemory"}
    assert {f["type"] for f in connection.route("forget_user_memory.json")} == {"userMemory"}

    # listSessions, renameSession: the conversation listed under the principal, then renamed;
    # openSession of it, at its turn: its session frame and that turn; stopReply with nothing
    # being written: nothing to say
    (listed,) = connection.route("list_sessions.json")
    assert listed["type"] == "sessions" and [s["sessionId"] for s in listed["sessions"]] == [session_id]
    (renamed,) = connection.route("rename_session.json")
    assert renamed == {"type": "renamed", "sessionId": session_id, "title": "Trip to Lisbon"}
    opened = connection.route("open_session.json", {"sessionId": session_id, "turn": 1})
    assert [f["type"] for f in opened][:2] == ["session", "turn"] and opened[0]["sessionId"] == session_id
    assert connection.route("stop_reply.json") == []

    # exportSession: the stored turn, in export frames
    exported = connection.route("export_session.json")
    assert exported and {f["type"] for f in exported} == {"export"}
    assert body["message"] in json.dumps(exported)

    # newSession: a fresh session, bound
    (fresh,) = connection.route("new_session.json")
    assert fresh["type"] == "session" and fresh["sessionId"] != session_id
    assert (
        connections.get_item(Key={"connection_id": connection.id})["Item"]["session_id"] == fresh["sessionId"]
    )

    # deleteSession, deleteMyData: erased (the first session's turn too), then a fresh session
    assert [f["type"] for f in connection.route("delete_session.json")][:1] == ["deleted"]
    assert [f["type"] for f in connection.route("delete_my_data.json")][:1] == ["deleted"]
    turns = Key("session_id").eq(session_id) & Key("turn_number").gt(0)  # 0: the meta item
    assert sessions.query(KeyConditionExpression=turns)["Items"] == []

    # $default: an unknown action, then a body that is not JSON; each an error frame
    for sample, code in (("default.json", "unknown_action"), ("default_not_json.json", "bad_request")):
        (error,) = connection.route(sample)
        assert error["type"] == "error" and error["code"] == code, sample
        assert error["requestId"] == load(sample)["requestContext"]["requestId"]

    # $disconnect: the binding is gone
    assert connection.route("disconnect.json") == []
    assert "Item" not in connections.get_item(Key={"connection_id": connection.id})
    assert cache.get(binding_key(connection.id)) is None
    clear_frames(quote(connection.id, safe=""))


@pytest.mark.slow
def test_the_outbox_sample_is_replayed_once_in_a_container(in_docker: tuple[SamLocal, Any, Any, str]) -> None:
    """The queued turn stored in its session, with its outbox id; no batch item failures."""
    sam, tables, _, _ = in_docker
    record = json.loads(load("outbox_replay.json")["Records"][0]["body"])
    replayed = sam.invoke("OutboxReplayFunction", EVENTS / "outbox_replay.json").response
    assert replayed == {"batchItemFailures": []}
    session = Key("session_id").eq(record["turn"]["session_id"])
    (stored,) = tables["ChatSessionsTable"].query(KeyConditionExpression=session)["Items"]
    assert stored["outbox_id"] == record["outbox_id"]
    assert stored["user_message"] == record["turn"]["user"]
    assert stored["assistant_reply"] == record["turn"]["assistant"]
