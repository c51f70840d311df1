"""Wiring of the $connect authenticator from ``Settings``.

Apart from ``chatmemory.services`` on purpose: the authorizer function imports this, and so
neither Redis, DynamoDB's wiring nor the conversation graph it never uses (cold start).
"""

from __future__ import annotations

from collections.abc import Callable

from chatmemory.config import Settings
from chatmemory.identity import Authenticator


def build_authenticator(settings: Settings) -> Authenticator:
    """The $connect authenticator; the guest key comes from Secrets Manager on AWS."""
    import jwt

    from chatmemory.identity import GuestTokens, UserTokens

    identity = settings.identity
    key = identity.guest_token_key
    if not key and identity.guest_token_secret_name:
        from aws_lambda_powertools.utilities import parameters

        key = str(parameters.get_secret(identity.guest_token_secret_name, max_age=300))
    guests = GuestTokens(key, identity.guest_token_ttl_seconds) if key else None
    users = None
    if identity.oidc_issuer and identity.oidc_audience:  # the settings refuse one without the other
        jwks_url = identity.oidc_jwks_url or identity.oidc_issuer.rstrip("/") + "/.well-known/jwks.json"
        users = UserTokens(
            identity.oidc_issuer, identity.oidc_audience, jwt.PyJWKClient(jwks_url, lifespan=3600)
        )
    admit = guest_admission(settings) if settings.quota.enabled else None
    return Authenticator(guests, users, identity.guests_enabled, admit)


def guest_admission(settings: Settings) -> Callable[[str], None]:
    """The per-source guest limit, its clients built when the first guest is asked for: a
    connection with a token never loads Redis or the DynamoDB wiring."""
    built: list[Callable[[str], None]] = []

    def admit(source: str) -> None:
        if not built:
            from chatmemory.quotas import GuestAdmission, counters_from_settings

            built.append(GuestAdmission(counters_from_settings(settings), settings.quota).admit)
        built[0](source)

    return admit
