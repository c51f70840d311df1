"""Privacy in operations: what the Powertools Logger writes (at DEBUG, everything it would ever
write) while a conversation runs through the handlers, and while the $connect authorizer checks
a user's JWT and a guest token, holds no message text, no reply and no token."""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from chatmemory.authentication import build_authenticator
from chatmemory.config import Settings
from chatmemory.identity import GuestTokens
from chatmemory.observability import REDACTED, logger
from chatmemory.services import Services

from local.events import authorizer_event, connect_event
from local.lambda_runtime import LambdaContext
from local.template import load_template
from tests.support.frames import reply_text
from tests.support.gateway import Client
from tests.support.identity import AUDIENCE, GUEST_KEY, ISSUER, Issuer, serving_jwks

SECRET = "my locker code is platypus-4711"


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The Powertools Logger's own output (what CloudWatch would get), at DEBUG."""
    stream = io.StringIO()
    handler = logger.registered_handler
    assert isinstance(handler, __import__("logging").StreamHandler)
    previous_stream, previous_level = handler.stream, logger.log_level
    handler.setStream(stream)
    logger.setLevel("DEBUG")
    yield stream
    handler.setStream(previous_stream)
    logger.setLevel(previous_level)


@pytest.fixture
def jwks_url() -> Iterator[tuple[Issuer, str]]:
    issuer = Issuer()
    with serving_jwks(issuer) as url:
        yield issuer, url


def authorizer_module(settings: Settings) -> ModuleType:
    """The authorizer's handler module, loaded afresh, with an authenticator built from these
    settings (as its cold start would build it from the environment)."""
    function = load_template().connect_authorizer()
    assert function is not None
    spec = importlib.util.spec_from_file_location("authorizer_under_test", function.function.module_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module._authenticator = build_authenticator(settings)
    return module


def authorize(module: ModuleType, token: str | None) -> dict[str, Any]:
    event = authorizer_event(connect_event("conn-auth", query={"token": token} if token else None))
    return dict(module.lambda_handler(event, LambdaContext("AuthorizerFunction")))


def test_no_message_reply_or_token_reaches_the_logs(
    services: Services, log_output: io.StringIO, jwks_url: tuple[Issuer, str]
) -> None:
    issuer, url = jwks_url
    settings = Settings(
        identity={
            "guest_token_key": GUEST_KEY,
            "oidc_issuer": ISSUER,
            "oidc_audience": AUDIENCE,
            "oidc_jwks_url": url,
        }
    )
    authorizer = authorizer_module(settings)
    user_jwt = issuer.token()
    guest_token = GuestTokens(GUEST_KEY, 3600).issue("guest:ada")
    expired_jwt = issuer.token(exp=1, iat=0)
    forged = guest_token[:-4] + "AAAA"

    # the authorizer: a user, a guest, a new guest, and tokens it refuses
    allowed = [authorize(authorizer, token) for token in (user_jwt, guest_token, None)]
    assert [a["principalId"] for a in allowed[:2]] == ["user:alice", "guest:ada"]
    new_guest_token = allowed[2]["context"]["guestToken"]
    for refused in (expired_jwt, forged):
        assert authorize(authorizer, refused)["policyDocument"]["Statement"][0]["Effect"] == "Deny"

    # a conversation: turns, a failing model, a retry, an export and an erasure
    client = Client("conn-private", principal="guest:ada")
    client.connect()
    reply = reply_text(client.send({"action": "sendMessage", "message": SECRET, "clientMessageId": "m-1"}))
    client.send({"action": "sendMessage", "message": SECRET, "clientMessageId": "m-1"})
    client.say(f"{SECRET} [offline:429]")
    client.say("x" * 20_000)
    client.send({"action": "exportSession"})
    client.send({"action": "deleteMyData"})

    logged = log_output.getvalue()
    lines = [json.loads(line) for line in logged.splitlines()]
    # the logger did write (about every one of those requests)...
    assert any(line["message"] == "connection allowed" for line in lines)
    assert any(line["message"] == "connection refused" for line in lines)
    assert any(line["message"] == "retried message; replaying its turn" for line in lines)
    assert any(line["message"] == "all data of a principal erased" for line in lines)
    # ...and none of it is what people wrote, what they were answered, or who they are
    assert "platypus" not in logged and "locker" not in logged
    assert reply and reply not in logged
    for token in (user_jwt, guest_token, new_guest_token, expired_jwt, forged):
        assert token not in logged
        for part in token.split("."):
            assert part not in logged


def test_the_formatter_redacts_fields_that_could_carry_content_and_anything_like_a_jwt(
    log_output: io.StringIO,
) -> None:
    token = GuestTokens(GUEST_KEY, 3600).issue("guest:ada")
    logger.info(
        f"refused {token}",
        extra={
            "user_message": SECRET,
            "guestToken": token,
            "event": {"body": SECRET},
            "nested": {"reply": SECRET, "detail": f"Bearer {token}"},
            "session_id": "9f0c",
        },
    )
    (line,) = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert SECRET not in json.dumps(line) and token not in json.dumps(line)
    assert line["user_message"] == line["guestToken"] == line["event"] == line["nested"]["reply"] == REDACTED
    assert line["message"] == f"refused {REDACTED}" and line["nested"]["detail"] == f"Bearer {REDACTED}"
    assert line["session_id"] == "9f0c"  # ids stay: they are what support needs


class FailsQuotingTheMessage:
    """A model whose failure quotes what it was given, as a validation error does (pydantic's
    ``input_value=...``): a bug of that kind must not put the user's words in the log."""

    def stream(self, prompt: Any) -> Any:
        from chatmemory.turns import Turn

        Turn.model_validate({"user": prompt.messages[-1]["content"], "turn": "not a number"})
        raise AssertionError("unreachable")


def test_a_failing_turn_logs_its_traceback_without_the_users_words(
    aws: Any, redis_url: str, log_output: io.StringIO
) -> None:
    from chatmemory.services import redis_client, use_services

    from tests.conftest import make_settings

    settings = make_settings(redis_url)
    use_services(Services(settings, aws, redis_client(settings), FailsQuotingTheMessage()))  # type: ignore[arg-type]
    try:
        client = Client("conn-failing", principal="guest:ada")
        client.connect()
        frames = client.say(SECRET)
    finally:
        use_services(None)

    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "internal"
    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    (failure,) = [line for line in lines if line["message"] == "unhandled error"]
    assert failure["exception_name"] == "ValidationError" and "stream" in failure["exception"]
    for line in log_output.getvalue().splitlines():
        assert "platypus" not in line and "locker" not in line, line
