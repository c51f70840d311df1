"""Who is connecting: an OIDC/Cognito user (a JWT verified against the issuer's JWKS), a
guest holding a token this backend issued, or a new guest.

Principals are namespaced (``user:<sub>``, ``guest:<id>``) so a guest id can never pose as
a user's subject.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

GUEST_ISSUER = "chat-memory:guest"
_GUEST_ALGORITHM = "HS256"
_USER_ALGORITHMS = ["RS256", "ES256"]


class Unauthorized(Exception):
    """The token is missing, malformed, expired, forged or for someone else."""


@dataclass(frozen=True)
class Identity:
    principal: str
    new_guest_token: str | None = None  # a new guest's token, or a renewed one (for the page to keep)

    @property
    def is_guest(self) -> bool:
        return self.principal.startswith("guest:")


class GuestTokens:
    """Guest tokens: JWTs signed with the backend's own key (HS256)."""

    def __init__(self, key: str, ttl_seconds: int, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 32:
            raise ValueError("the guest token key must be at least 32 characters")
        self._key, self._ttl, self._clock = key, ttl_seconds, clock

    def issue(self, principal: str) -> str:
        now = int(self._clock())
        claims = {"iss": GUEST_ISSUER, "sub": principal, "iat": now, "exp": now + self._ttl}
        return jwt.encode(claims, self._key, algorithm=_GUEST_ALGORITHM)

    def verify(self, token: str) -> str:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[_GUEST_ALGORITHM],
                issuer=GUEST_ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"guest token refused: {type(exc).__name__}") from exc
        principal = str(claims["sub"])
        if not principal.startswith("guest:"):
            raise Unauthorized("guest token for a non-guest principal")
        return principal

    def due_for_renewal(self, token: str) -> bool:
        """Whether a verified token is past half its lifetime: then the connection gets a new
        one (in its ``session`` frame), so a guest in use never reaches the end of theirs."""
        expires = int(jwt.decode(token, options={"verify_signature": False}).get("exp", 0))
        return expires - self._clock() < self._ttl / 2


class UserTokens:
    """OIDC/Cognito ID or access tokens, verified against the issuer's JWKS (keys cached by
    ``PyJWKClient``): signature, issuer, expiry, and whom the token is for, as its type says.
    An ID token (or any OIDC token without ``token_use``) must name the audience in ``aud``; a
    Cognito access token has no ``aud``: its ``client_id`` must be the audience (the app client
    id). Any other ``token_use`` (a refresh token, say) is refused."""

    def __init__(self, issuer: str, audience: str, jwks: jwt.PyJWKClient) -> None:
        self._issuer, self._audience, self._jwks = issuer, audience, jwks

    def verify(self, token: str) -> str:
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=_USER_ALGORITHMS,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "iss"], "verify_aud": False},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"user token refused: {type(exc).__name__}") from exc
        self._check_audience(claims)
        return f"user:{claims['sub']}"

    def _check_audience(self, claims: dict[str, Any]) -> None:
        token_use = claims.get("token_use")
        if token_use == "access":
            if claims.get("client_id") != self._audience:
                raise Unauthorized("user token refused: an access token for another client")
            return
        if token_use not in (None, "id"):
            raise Unauthorized(f"user token refused: token_use {str(token_use)[:20]!r}")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self._audience not in audiences:
            raise Unauthorized("user token refused: for another audience")


class Authenticator:
    def __init__(
        self,
        guests: GuestTokens | None,
        users: UserTokens | None,
        guests_enabled: bool,
        admit_guest: Callable[[str], None] | None = None,
    ) -> None:
        """``admit_guest(source)``: raises ``Unauthorized`` when that source may not create a guest now."""
        self._guests, self._users, self._guests_enabled = guests, users, guests_enabled
        self._admit_guest = admit_guest

    def authenticate(self, token: str | None, source: str = "unknown") -> Identity:
        if not token:
            if not (self._guests_enabled and self._guests):
                raise Unauthorized("a token is required")
            if self._admit_guest is not None:
                self._admit_guest(source)
            principal = f"guest:{uuid.uuid4()}"
            return Identity(principal, new_guest_token=self._guests.issue(principal))
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed token") from exc
        if issuer == GUEST_ISSUER:
            if not (self._guests_enabled and self._guests):
                raise Unauthorized("guests are not enabled")
            principal = self._guests.verify(token)
            renewed = self._guests.issue(principal) if self._guests.due_for_renewal(token) else None
            return Identity(principal, new_guest_token=renewed)
        if self._users is None:
            raise Unauthorized("no identity provider is configured")
        return Identity(self._users.verify(token))

    def guest_token(self, principal: str) -> str | None:
        """A fresh token for a guest principal, so a page can resume as that guest later."""
        if self._guests is None or not principal.startswith("guest:"):
            return None
        return self._guests.issue(principal)


def source_of(source_ip: str | None, headers: dict[str, str] | None, forwarded_for_hops: int) -> str:
    """The address guests are counted against: API Gateway's source IP, or behind ``hops``
    trusted proxies the address the outermost of them saw (addresses left of it are the
    client's own say). An IPv6 address counts as its /64: one host usually holds the whole /64."""
    address = source_ip or "unknown"
    if forwarded_for_hops:
        forwarded = next((v for k, v in (headers or {}).items() if k.lower() == "x-forwarded-for"), "")
        hops = [part.strip() for part in forwarded.split(",") if part.strip()]
        if len(hops) >= forwarded_for_hops:
            address = hops[-forwarded_for_hops]
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)
