"""Identity at $connect through the local stack's authorizer: guests get a token that resumes
their session; nobody else resumes it; bad tokens never get a socket."""

from __future__ import annotations

import pytest
from chatmemory.identity import GuestTokens
from websockets.exceptions import InvalidStatus

from local.__main__ import LOCAL_GUEST_KEY
from tests.e2e.conftest import Stack
from tests.e2e.test_stack_conversation import open_socket, reply, session_of, turn


def test_a_new_guest_gets_a_token_and_resumes_with_it(stack: Stack) -> None:
    with open_socket(stack) as ws:
        first = session_of(ws)
        turn(ws, "I am the owner")
    assert first["resumed"] is False and first["guestToken"]

    with open_socket(stack, first["sessionId"], first["guestToken"]) as ws:
        again = session_of(ws)
        answer = turn(ws, "still me")
    assert again["sessionId"] == first["sessionId"] and again["resumed"] is True
    assert "guestToken" not in again  # a returning guest already holds it
    assert answer[-1]["usage"]["budget"]["historyTurns"] == 1  # the owner's turn came with the prompt


def test_another_principal_cannot_resume_the_session(stack: Stack) -> None:
    with open_socket(stack) as ws:
        owner = session_of(ws)
        turn(ws, "a secret only I should see")

    # another guest (no token) asks for the owner's session id
    with open_socket(stack, owner["sessionId"]) as ws:
        intruder = session_of(ws)
        answer = turn(ws, "what did they say?")

    assert intruder["sessionId"] != owner["sessionId"] and intruder["resumed"] is False
    assert intruder["history"] == []
    assert "secret" not in reply(answer)


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        GuestTokens("a-key-that-is-not-the-stacks-signing-key", 3600).issue("guest:forged"),
        GuestTokens(LOCAL_GUEST_KEY, 3600, clock=lambda: 0).issue("guest:old"),
    ],
    ids=["garbage", "forged", "expired"],
)
def test_bad_tokens_are_refused_at_the_handshake(stack: Stack, token: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        open_socket(stack, token=token)
    assert refused.value.response.status_code == 403
