"""Identity at $connect: JWTs against a JWKS served over HTTP, guest tokens, new guests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from chatmemory.identity import Authenticator, GuestTokens, Unauthorized, UserTokens

from tests.support.identity import AUDIENCE, GUEST_KEY, ISSUER, Issuer, serving_jwks


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def jwks_url(issuer: Issuer) -> Iterator[str]:
    with serving_jwks(issuer) as url:
        yield url


@pytest.fixture
def authenticator(jwks_url: str) -> Authenticator:
    users = UserTokens(ISSUER, AUDIENCE, jwt.PyJWKClient(jwks_url))
    return Authenticator(GuestTokens(GUEST_KEY, 3600), users, guests_enabled=True)


def test_a_valid_user_token_gives_the_user_principal(authenticator: Authenticator, issuer: Issuer) -> None:
    identity = authenticator.authenticate(issuer.token())
    assert identity.principal == "user:alice" and identity.new_guest_token is None


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) - 10},
        {"aud": "another-app"},
        {"iss": "https://evil.example.test"},
    ],
    ids=["expired", "wrong-audience", "wrong-issuer"],
)
def test_bad_user_tokens_are_refused(
    authenticator: Authenticator, issuer: Issuer, claims: dict[str, Any]
) -> None:
    with pytest.raises(Unauthorized):
        authenticator.authenticate(issuer.token(**claims))


def test_a_forged_signature_is_refused(authenticator: Authenticator) -> None:
    forger = Issuer()  # a different key with the same kid
    with pytest.raises(Unauthorized):
        authenticator.authenticate(forger.token())


def test_no_token_makes_a_new_guest_whose_token_resumes_it(authenticator: Authenticator) -> None:
    first = authenticator.authenticate(None)
    assert first.is_guest and first.new_guest_token
    again = authenticator.authenticate(first.new_guest_token)
    assert again.principal == first.principal and again.new_guest_token is None


def test_guest_tokens_signed_with_another_key_or_expired_are_refused(authenticator: Authenticator) -> None:
    forged = GuestTokens("x" * 40, 3600).issue("guest:someone")
    expired = GuestTokens(GUEST_KEY, 3600, clock=lambda: time.time() - 7200).issue("guest:someone")
    for token in (forged, expired, "not-a-jwt"):
        with pytest.raises(Unauthorized):
            authenticator.authenticate(token)


def test_a_guest_token_cannot_claim_a_user_principal(authenticator: Authenticator) -> None:
    token = GuestTokens(GUEST_KEY, 3600).issue("user:alice")
    with pytest.raises(Unauthorized):
        authenticator.authenticate(token)


def test_without_guests_a_token_is_required() -> None:
    closed = Authenticator(GuestTokens(GUEST_KEY, 3600), None, guests_enabled=False)
    with pytest.raises(Unauthorized):
        closed.authenticate(None)
    with pytest.raises(Unauthorized):
        closed.authenticate(GuestTokens(GUEST_KEY, 3600).issue("guest:g"))


# ---- Cognito's two token types ----------------------------------------------------------------


def cognito(issuer: Issuer, token_use: str, **claims: Any) -> str:
    """A Cognito token: an ID token names the app client in ``aud``; an access token has no
    ``aud`` and names it in ``client_id``."""
    if token_use == "access":
        return issuer.token(**{"aud": None, "token_use": "access", "client_id": AUDIENCE, **claims})
    return issuer.token(token_use=token_use, **claims)


@pytest.mark.parametrize("token_use", ["id", "access"])
def test_cognito_id_and_access_tokens_give_the_user_principal(
    authenticator: Authenticator, issuer: Issuer, token_use: str
) -> None:
    assert authenticator.authenticate(cognito(issuer, token_use)).principal == "user:alice"


@pytest.mark.parametrize(
    ("token_use", "claims"),
    [
        ("access", {"client_id": "another-client"}),
        ("id", {"aud": "another-client"}),
        ("refresh", {}),
        ("access", {"client_id": None}),
    ],
    ids=["access-for-another-client", "id-for-another-client", "another-token-use", "access-without-client"],
)
def test_cognito_tokens_for_another_client_or_of_another_use_are_refused(
    authenticator: Authenticator, issuer: Issuer, token_use: str, claims: dict[str, Any]
) -> None:
    with pytest.raises(Unauthorized):
        authenticator.authenticate(cognito(issuer, token_use, **claims))


def test_a_token_without_audience_or_client_is_refused(authenticator: Authenticator, issuer: Issuer) -> None:
    with pytest.raises(Unauthorized):
        authenticator.authenticate(issuer.token(aud=None))


def test_an_issuer_without_an_audience_is_refused_as_a_setting() -> None:
    from chatmemory.config import IdentitySettings
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="OIDC_AUDIENCE"):
        IdentitySettings(oidc_issuer=ISSUER)
    assert IdentitySettings(oidc_issuer=ISSUER, oidc_audience=AUDIENCE).oidc_audience == AUDIENCE


def test_a_guest_token_past_half_its_life_is_renewed_and_a_fresh_one_is_not() -> None:
    clock = [time.time() - 2000]  # the token's issue; PyJWT checks its expiry on the real clock
    guests = GuestTokens(GUEST_KEY, 3600, clock=lambda: clock[0])
    authenticator = Authenticator(guests, None, guests_enabled=True)
    token = authenticator.authenticate(None).new_guest_token
    assert token

    clock[0] += 1000  # 2,600 s of 3,600 left: kept
    same = authenticator.authenticate(token)
    assert same.new_guest_token is None

    clock[0] += 1000  # 1,600 s left: renewed, for the same guest, with a full lifetime
    renewed = authenticator.authenticate(token)
    assert renewed.principal == same.principal and renewed.new_guest_token
    claims = jwt.decode(renewed.new_guest_token, options={"verify_signature": False})
    assert claims["exp"] == int(clock[0]) + 3600
