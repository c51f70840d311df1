"""Every sample in events/ through the handler template.yaml names for its route, with the
environment ``sam local invoke --env-vars events/env.json`` would give that function, on moto
over HTTP (DynamoDB and the @connections API) and the real Redis.

The samples are one conversation on one connection: connect, getSession, sendMessage, two
frames no route takes, disconnect.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pytest
import redis
from apigw_websocket import ConnectEvent, DisconnectEvent, MessageEvent
from boto3.dynamodb.conditions import Key
from chatmemory import services
from chatmemory.config import get_settings
from chatmemory.connections import binding_key

from local.lambda_runtime import invoke
from local.template import ROOT, Function, create_tables, load_template
from tests.support.frames import clear_frames, frames_sent, reply_text
from tests.support.processes import MotoHttpServer

EVENTS = ROOT / "events"
ENV_FILE = EVENTS / "env.json"
CONVERSATION = [
    "connect.json",
    "get_session.json",
    "send_message.json",
    "default.json",
    "default_not_json.json",
    "disconnect.json",
]
MODELS: dict[str, type[ConnectEvent | MessageEvent | DisconnectEvent]] = {
    "CONNECT": ConnectEvent,
    "MESSAGE": MessageEvent,
    "DISCONNECT": DisconnectEvent,
}
# What the domain reads from the environment: only the template's variables may reach a
# function under sam local, so stray values of the test process are removed.
SETTINGS_VARIABLE = re.compile(
    r"^(MEMORY|STORAGE|CACHE|BREAKER|LLM|STREAM|IDENTITY)__|^(REDIS_URL|DYNAMODB_ENDPOINT_URL|"
    r"ANTHROPIC_API_KEY|ANTHROPIC_BASE_URL|SESSIONS_TABLE|CONNECTIONS_TABLE|CONNECTIONS_ENDPOINT_URL)$"
)
LOCAL_HOST = "host.docker.internal"


def posted(connection_id: str) -> list[dict[str, Any]]:
    """The frames moto's server took for the connection (it keys them by the id as it appears,
    percent-encoded, in the request path)."""
    return frames_sent(quote(connection_id, safe=""))


AUTHORIZER_SAMPLE = EVENTS / "authorizer.json"  # the $connect authorizer's input, not a route event


def samples() -> list[Path]:
    return sorted(p for p in EVENTS.glob("*.json") if p not in (ENV_FILE, AUTHORIZER_SAMPLE))


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((EVENTS / name).read_text()))


def env_file() -> dict[str, dict[str, str]]:
    return dict(json.loads(ENV_FILE.read_text()))


# ---- what sam local invoke --env-vars does ---------------------------------------------------


def _condition(raw: dict[str, Any], expr: Any) -> bool:
    if isinstance(expr, dict) and len(expr) == 1:
        ((fn, args),) = expr.items()
        if fn == "Condition":
            return _condition(raw, raw["Conditions"][args])
        if fn == "Fn::Not":
            return not _condition(raw, args[0])
        if fn == "Fn::And":
            return all(_condition(raw, a) for a in args)
        if fn == "Fn::Or":
            return any(_condition(raw, a) for a in args)
        if fn == "Fn::Equals":
            left, right = (_value(raw, a) for a in args)
            return bool(left == right)
    raise AssertionError(f"condition not understood: {expr}")


_NO_VALUE = object()


def _value(raw: dict[str, Any], value: Any) -> Any:
    """A variable's value with the parameters' defaults, as sam local resolves it."""
    if isinstance(value, dict) and list(value) == ["Ref"]:
        name = value["Ref"]
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in raw["Parameters"]:
            return raw["Parameters"][name].get("Default", "")
        return name  # a resource: sam local gives its logical id
    if isinstance(value, dict) and list(value) == ["Fn::If"]:
        condition, then, otherwise = value["Fn::If"]
        return _value(raw, then if _condition(raw, raw["Conditions"][condition]) else otherwise)
    if isinstance(value, dict | list):
        return _NO_VALUE  # nothing sam local could resolve without a deployed stack
    return value


def _stringify(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def declared_variables(function: Function) -> dict[str, Any]:
    """Globals' variables, then the function's own: what the template declares for it."""
    raw = load_template().raw
    glob = raw.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    own = raw["Resources"][function.logical_id]["Properties"].get("Environment", {}).get("Variables", {})
    return {**glob, **own}


def sam_local_environment(function: Function, overrides: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The function's variables as ``sam local invoke --env-vars`` sets them: the template's
    (parameter defaults resolved), then the file's ``Parameters``, then its section for the
    function. Only variables the template declares are set at all."""
    raw = load_template().raw
    file_values = {**overrides.get("Parameters", {}), **overrides.get(function.logical_id, {})}
    env = {}
    for name, value in declared_variables(function).items():
        if name in file_values:
            env[name] = _stringify(file_values[name])
            continue
        resolved = _value(raw, value)
        if resolved is not _NO_VALUE:
            env[name] = _stringify(resolved)
    return env


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def moto_server() -> Iterator[MotoHttpServer]:
    with MotoHttpServer() as server:
        yield server


class SamLocal:
    """Invokes a route's function as sam local would, with env.json's local endpoints pointed
    at this test's moto server and Redis."""

    def __init__(self, moto_url: str, redis_url: str) -> None:
        self.local_endpoints = {
            "DYNAMODB_ENDPOINT_URL": moto_url,
            "CONNECTIONS_ENDPOINT_URL": moto_url,  # moto also serves POST /@connections/{id}
            "REDIS_URL": redis_url,
        }
        self.routes = load_template().routes()
        self.overrides = env_file()

    def environment(self, function: Function) -> dict[str, str]:
        env = sam_local_environment(function, self.overrides)
        for name, url in self.local_endpoints.items():
            # env.json points the container at the host; this test's servers are on the host.
            assert LOCAL_HOST in env[name], f"{name} in events/env.json does not point at {LOCAL_HOST}"
            env[name] = url
        env["AWS_SAM_LOCAL"] = "true"
        return env

    def invoke(self, event: dict[str, Any], function: Function | None = None) -> Any:
        function = function or self.routes[event["requestContext"]["routeKey"]]
        saved = dict(os.environ)
        for name in [n for n in os.environ if SETTINGS_VARIABLE.match(n)]:
            del os.environ[name]
        os.environ.update(self.environment(function))
        services.use_services(None)
        get_settings.cache_clear()
        try:
            return invoke(function, event)
        finally:
            os.environ.clear()
            os.environ.update(saved)
            services.use_services(None)
            get_settings.cache_clear()

    def table(self, logical_id: str) -> Any:
        names = {
            "ChatSessionsTable": self.overrides["Parameters"]["SESSIONS_TABLE"],
            "ConnectionsTable": self.overrides["Parameters"]["CONNECTIONS_TABLE"],
        }
        dynamodb = boto3.resource(
            "dynamodb", endpoint_url=self.local_endpoints["DYNAMODB_ENDPOINT_URL"], region_name="us-east-1"
        )
        create_tables(dynamodb, names)
        return dynamodb.Table(names[logical_id])


@pytest.fixture
def sam_local(moto_server: MotoHttpServer, redis_url: str) -> SamLocal:
    return SamLocal(moto_server.url, redis_url)


# ---- the files --------------------------------------------------------------------------------


def test_every_sample_is_part_of_the_conversation() -> None:
    assert sorted(CONVERSATION) == [p.name for p in samples()]


@pytest.mark.parametrize("sample", samples(), ids=lambda p: p.name)
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
    ids = {load(name)["requestContext"]["connectionId"] for name in CONVERSATION}
    assert len(ids) == 1


def test_env_file_only_sets_variables_the_template_declares() -> None:
    """sam local ignores a variable the template does not declare for the function."""
    overrides = env_file()
    functions = load_template().functions()
    assert set(overrides) == {"Parameters", *functions}
    declared_by_all = set.intersection(*(set(declared_variables(f)) for f in functions.values()))
    assert set(overrides["Parameters"]) <= declared_by_all
    for name, function in functions.items():
        assert set(overrides[name]) <= set(declared_variables(function)), name
    for section in overrides.values():
        assert all(isinstance(v, str) for v in section.values())


def test_env_file_points_every_function_at_local_endpoints() -> None:
    overrides = env_file()
    for function in load_template().functions().values():
        env = sam_local_environment(function, overrides)
        assert env["LLM__PROVIDER"] == "offline"
        assert env["DYNAMODB_ENDPOINT_URL"].startswith(f"http://{LOCAL_HOST}:")
        assert env["CONNECTIONS_ENDPOINT_URL"].startswith(f"http://{LOCAL_HOST}:")
        assert env["REDIS_URL"].startswith(f"redis://{LOCAL_HOST}:")
        assert env["SESSIONS_TABLE"] and env["CONNECTIONS_TABLE"]


# ---- the conversation -----------------------------------------------------------------------


def test_the_samples_hold_a_conversation(sam_local: SamLocal, redis_url: str) -> None:
    connect = load("connect.json")
    connection_id = connect["requestContext"]["connectionId"]
    connections = sam_local.table("ConnectionsTable")
    sessions = sam_local.table("ChatSessionsTable")
    cache = redis.Redis.from_url(redis_url)
    clear_frames(quote(connection_id, safe=""))

    # $connect: 200, and the connection is bound to a new session (the requested one has no turns)
    assert sam_local.invoke(connect) == {"statusCode": 200}
    binding = connections.get_item(Key={"connection_id": connection_id})["Item"]
    session_id = str(binding["session_id"])
    assert session_id != connect["queryStringParameters"]["session_id"]
    assert cache.get(binding_key(connection_id)) is not None
    assert posted(connection_id) == []

    # getSession: the session frame, posted to the connection
    assert sam_local.invoke(load("get_session.json")) == {"statusCode": 200}
    (frame,) = posted(connection_id)
    assert frame["type"] == "session" and frame["sessionId"] == session_id
    assert frame["resumed"] is False and frame["history"] == []
    seen = 1

    # sendMessage: deltas, then done; the turn is stored with the reply
    send = load("send_message.json")
    assert sam_local.invoke(send) == {"statusCode": 200}
    frames = posted(connection_id)[seen:]
    seen += len(frames)
    assert [f["type"] for f in frames[:-1]] == ["delta"] * (len(frames) - 1) and len(frames) >= 2
    done = frames[-1]
    assert done["type"] == "done" and done["turn"] == 1 and done["memoryMode"] == "full"
    (item,) = sessions.query(KeyConditionExpression=Key("session_id").eq(session_id))["Items"]
    assert item["user_message"] == json.loads(send["body"])["message"]
    assert item["client_message_id"] == json.loads(send["body"])["clientMessageId"]
    assert item["assistant_reply"] == reply_text(frames) and item["status"] == "complete"

    # $default: an unknown action, then a body that is not JSON; each an error frame
    for name, code in (("default.json", "unknown_action"), ("default_not_json.json", "bad_request")):
        event = load(name)
        assert sam_local.invoke(event) == {"statusCode": 200}
        (error,) = posted(connection_id)[seen:]
        seen += 1
        assert error["type"] == "error" and error["code"] == code, name
        assert error["requestId"] == event["requestContext"]["requestId"]

    # $disconnect: the binding is gone, the session's turns stay
    assert sam_local.invoke(load("disconnect.json")) == {"statusCode": 200}
    assert "Item" not in connections.get_item(Key={"connection_id": connection_id})
    assert cache.get(binding_key(connection_id)) is None
    assert sessions.query(KeyConditionExpression=Key("session_id").eq(session_id))["Count"] == 1
    clear_frames(quote(connection_id, safe=""))


def test_the_authorizer_sample_makes_a_guest(sam_local: SamLocal) -> None:
    """No ?token=: a new guest, allowed on this API's $connect, its token in the context."""
    event = json.loads(AUTHORIZER_SAMPLE.read_text())
    authorizer = load_template().connect_authorizer()
    assert authorizer is not None

    policy = sam_local.invoke(event, authorizer.function)

    assert policy["principalId"].startswith("guest:")
    (statement,) = policy["policyDocument"]["Statement"]
    assert statement["Effect"] == "Allow" and statement["Resource"] == [event["methodArn"]]
    assert policy["context"]["principal"] == policy["principalId"]
    assert policy["context"]["guestToken"]

    # the same sample with a forged token: denied
    forged = {**event, "queryStringParameters": {**event["queryStringParameters"], "token": "forged"}}
    denied = sam_local.invoke(forged, authorizer.function)
    assert {s["Effect"] for s in denied["policyDocument"]["Statement"]} == {"Deny"}


def test_the_environment_is_restored(sam_local: SamLocal) -> None:
    event = load("default.json")
    before = dict(os.environ)
    sam_local.invoke(event)
    assert dict(os.environ) == before
    clear_frames(quote(event["requestContext"]["connectionId"], safe=""))
