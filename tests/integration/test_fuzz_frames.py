"""Property-based fuzzing of client frames (hypothesis) through the real ``$default`` and
``sendMessage`` handlers, with API-Gateway-shaped events, on moto and a real Redis: whatever a
client sends that is not a valid frame gets exactly one ``error`` frame with a known code, no
exception leaves a handler, and nothing is written anywhere."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from chatmemory.errors import ErrorCode
from chatmemory.protocol import KNOWN_ACTIONS
from chatmemory.services import Services, redis_client, use_services
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from local.events import message_event
from local.lambda_runtime import invoke
from local.template import load_template
from tests.conftest import make_settings
from tests.support.frames import DOMAIN, STAGE, frames_sent
from tests.support.gateway import Client

MAX_CHARS = 200  # the limit of the stack under test, so over-limit messages stay small
CODES = {str(code) for code in ErrorCode}
CONNECTION = "fuzz-1"

# ---- what a hostile client sends ----------------------------------------------------------

lone_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
controls = st.sampled_from([chr(c) for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]])
any_text = st.text(st.characters(codec=None) | lone_surrogates | controls, max_size=60)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=6,
)
unknown_actions = st.one_of(
    any_text,
    st.sampled_from(["SendMessage", "sendmessage", " sendMessage", "$default", "x" * 5000]),
    st.tuples(any_text, lone_surrogates | controls).map("".join),
).filter(lambda action: action not in KNOWN_ACTIONS)


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


def _with(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**base, **fields}


SEND = {"action": "sendMessage"}
over_limit = st.integers(MAX_CHARS + 1, MAX_CHARS * 4).map(lambda n: "x" * n)
whitespace = st.text(st.sampled_from(" \t\n\r\u00a0\u2003\u3000"), min_size=0, max_size=20)
with_control = st.tuples(any_text, controls, any_text).map("".join)
with_surrogate = st.tuples(any_text, lone_surrogates, any_text).map("".join)
bad_ids = (
    st.integers(129, 5000).map(lambda n: "i" * n)
    | json_scalars.filter(lambda v: v is not None and not isinstance(v, str))  # null: no id, valid
    | st.just("")
    | st.text(st.sampled_from(" /!?#\"'{}é漢"), min_size=1, max_size=20)
    | with_surrogate
)
send_frames = st.one_of(
    st.just(SEND),  # no message
    json_values.filter(lambda v: not isinstance(v, str)).map(lambda v: _with(SEND, message=v)),
    whitespace.map(lambda m: _with(SEND, message=m)),
    over_limit.map(lambda m: _with(SEND, message=m)),
    with_control.map(lambda m: _with(SEND, message=m)),
    with_surrogate.map(lambda m: _with(SEND, message=m)),
    bad_ids.map(lambda i: _with(SEND, message="hello", clientMessageId=i)),
    st.dictionaries(
        any_text.filter(lambda k: k not in ("action", "message", "clientMessageId")),
        json_values,
        min_size=1,
        max_size=3,
    ).map(lambda extra: {**extra, **SEND, "message": "hello"}),
)
default_frames = st.one_of(
    any_text.filter(_not_json).map(lambda text: ("text", text)),
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: ("json", v)),
    st.dictionaries(any_text.filter(lambda k: k != "action"), json_values, max_size=3).map(
        lambda v: ("json", v)
    ),
    st.tuples(unknown_actions, st.dictionaries(any_text, json_values, max_size=2)).map(
        lambda pair: ("json", {**pair[1], "action": pair[0]})
    ),
    # a text frame that is not valid UTF-8 reaches the handler, at worst, with its bad bytes
    # escaped (surrogateescape) or as base64 with isBase64Encoded
    st.binary(min_size=1, max_size=40)
    .filter(_not_utf8)
    .map(lambda b: ("text", b.decode("utf-8", "surrogateescape"))),
    st.binary(min_size=1, max_size=40).map(lambda b: ("base64", base64.b64encode(b).decode())),
)


def body_of(kind: str, value: Any) -> str:
    if kind == "json":
        return json.dumps(value)  # ensure_ascii: lone surrogates become \\udXXX escapes
    return str(value)


def route_for(body: str, is_base64: bool) -> str:
    """API Gateway's route selection on ``$request.body.action``."""
    try:
        action = json.loads(body).get("action") if not is_base64 else None
    except (ValueError, AttributeError):
        return "$default"
    return action if action in load_template().routes() else "$default"


# ---- the property ------------------------------------------------------------------------------


@pytest.fixture
def small_limit(aws: Any, redis_url: str) -> Iterator[Services]:
    from chatmemory.llm.anthropic_model import build_chat_model

    built_settings = make_settings(redis_url, memory={"max_message_chars": MAX_CHARS})
    built = Services(
        built_settings, aws, redis_client(built_settings), build_chat_model(built_settings.llm, None)
    )
    use_services(built)
    yield built
    use_services(None)


def state(aws: Any, redis_url: str) -> tuple[Any, ...]:
    """Everything stored: both tables' items and every Redis key with its value."""
    tables = tuple(
        sorted(map(str, aws.Table(name).scan(ConsistentRead=True)["Items"]))
        for name in ("ChatSessions", "ChatConnections")
    )
    cache = redis.Redis.from_url(redis_url)
    return (*tables, sorted((key, cache.dump(key)) for key in cache.keys("*")))


def test_hostile_frames_get_an_error_frame_and_change_nothing(
    small_limit: Services, aws: Any, redis_url: str
) -> None:
    client = Client(CONNECTION, principal="guest:fuzz")
    client.connect()
    client.say("a first turn, so the session has history")
    small_limit.scheduler.drain()  # type: ignore[attr-defined]
    before = state(aws, redis_url)
    routes = load_template().routes()
    seen = len(frames_sent(CONNECTION))
    served = {"sendMessage": 0, "$default": 0}

    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(frame=st.one_of(send_frames.map(lambda f: ("json", f)), default_frames))
    # one of each kind, whatever the draw
    @example(frame=("text", "not json"))
    @example(frame=("json", [1, 2]))
    @example(frame=("json", {"action": "dance\udc80"}))
    @example(frame=("json", {"action": "sendMessage", "message": 42}))
    @example(frame=("json", {"action": "sendMessage", "message": "hi", "extra\x00": 1}))
    @example(frame=("json", {"action": "sendMessage", "message": " \t\n "}))
    @example(frame=("json", {"action": "sendMessage", "message": "x" * (MAX_CHARS + 1)}))
    @example(frame=("json", {"action": "sendMessage", "message": "bell\x07"}))
    @example(frame=("json", {"action": "sendMessage", "message": "half \ud83d"}))
    @example(
        frame=("text", b'{"action": "sendMessage", "message": "\xff"}'.decode("utf-8", "surrogateescape"))
    )
    @example(frame=("json", {"action": "sendMessage", "message": "hi", "clientMessageId": "i" * 100_000}))
    def hostile(frame: tuple[str, Any]) -> None:
        nonlocal seen
        kind, value = frame
        body = body_of(kind, value)
        route = route_for(body, kind == "base64")
        event = message_event(
            CONNECTION, route, body, domain_name=DOMAIN, stage=STAGE, is_base64=kind == "base64"
        )
        assert invoke(routes[route], event) == {"statusCode": 200}  # raises if anything escaped
        frames = frames_sent(CONNECTION)
        new, seen = frames[seen:], len(frames)
        assert len(new) == 1, (body, new)
        (error,) = new
        assert error["type"] == "error" and error["code"] in CODES and error["code"] != "internal", (
            body,
            error,
        )
        assert error["message"].endswith(".") and error["requestId"] == event["requestContext"]["requestId"]
        assert state(aws, redis_url) == before, body
        served[route] += 1

    hostile()
    assert served["sendMessage"] > 20 and served["$default"] > 20, served


# ---- the session list's routes -------------------------------------------------------------------

UNKNOWN_SESSION = "6f1c2b9e-3d4a-4f8b-9c7d-2e5a1b0c9d8e"


def _invalid(frame: dict[str, Any]) -> bool:
    """Refused by the protocol, so it may change nothing (a valid rename would)."""
    from chatmemory.errors import ChatError
    from chatmemory.protocol import parse_client_frame

    try:
        parse_client_frame(json.dumps(frame))
    except ChatError:
        return True
    return False


def _fields(action: str, names: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    hostile_values = json_values | over_limit | with_control | with_surrogate | whitespace
    return st.dictionaries(st.sampled_from(names) | any_text, hostile_values, max_size=3).map(
        lambda fields: {**fields, "action": action}
    )


list_frames = st.one_of(
    _fields("listSessions", ("cursor", "limit")).filter(_invalid),
    st.text(max_size=40).filter(lambda c: c != "").map(lambda c: {"action": "listSessions", "cursor": c}),
)
open_frames = st.one_of(
    _fields("openSession", ("sessionId", "turn")).filter(_invalid),
    # well formed, but no conversation of the caller's: refused alike, nothing changes
    st.sampled_from([UNKNOWN_SESSION, "not-a-uuid", "x" * 64]).map(
        lambda s: {"action": "openSession", "sessionId": s}
    ),
)
rename_frames = st.one_of(
    _fields("renameSession", ("title", "sessionId")).filter(_invalid),
    st.just({"action": "renameSession", "title": "mine", "sessionId": UNKNOWN_SESSION}),
)


@pytest.mark.moto_only("the session's listing is created in a TransactWriteItems, which dynalite lacks")
def test_hostile_session_list_frames_get_an_error_frame_and_change_nothing(
    small_limit: Services, aws: Any, redis_url: str
) -> None:
    client = Client(CONNECTION, principal="guest:fuzz")
    client.connect()
    client.say("a first turn, so the session is listed")
    small_limit.scheduler.drain()  # type: ignore[attr-defined]
    before = state(aws, redis_url)
    routes = load_template().routes()
    seen = len(frames_sent(CONNECTION))
    served: dict[str, int] = {"listSessions": 0, "openSession": 0, "renameSession": 0}

    @settings(
        max_examples=90,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
        ],
        database=None,
    )
    @given(frame=st.one_of(list_frames, open_frames, rename_frames))
    @example(frame={"action": "listSessions", "limit": 0})
    @example(frame={"action": "listSessions", "cursor": "eyJzIjoxfQ"})  # decodes, is not a page
    @example(frame={"action": "openSession", "sessionId": UNKNOWN_SESSION, "turn": 0})
    @example(frame={"action": "renameSession", "title": "two\nlines"})
    @example(frame={"action": "renameSession", "title": "x" * 81})
    def hostile(frame: dict[str, Any]) -> None:
        nonlocal seen
        body = json.dumps(frame)
        route = route_for(body, False)
        event = message_event(CONNECTION, route, body, domain_name=DOMAIN, stage=STAGE)
        assert invoke(routes[route], event) == {"statusCode": 200}
        frames = frames_sent(CONNECTION)
        new, seen = frames[seen:], len(frames)
        assert len(new) == 1, (body, new)
        (error,) = new
        assert error["type"] == "error" and error["code"] in CODES and error["code"] != "internal", (
            body,
            error,
        )
        assert state(aws, redis_url) == before, body
        served[route] += 1

    hostile()
    assert all(count > 10 for count in served.values()), served
