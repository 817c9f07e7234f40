"""OAuth2/OIDC bearer JWTs from the enterprise IdP: callers' access tokens and users' ID tokens.

Two uses of one issuer:

* **callers** (backends) may send ``Authorization: Bearer <JWT>`` instead of an API key;
  the token's scopes (``scope`` string or ``scp`` list) map to the relay's scopes;
* **end users**: ``X-User-Token: <ID token>`` on ``/verify``; its ``sub`` must be the
  proof's ``sub`` and its role claims feed the policy engine.

Keys come from the issuer's JWKS (configured ``jwks_uri`` or OIDC discovery), cached,
refetched when the cache is older than ``jwks_cache_seconds`` and when a token names an
unknown ``kid`` (key rotation) — at most once per ``jwks_min_refresh_seconds``, so
tokens with made-up ``kid`` values cannot make the relay hammer the IdP. Fetching uses
``httpx.AsyncClient``: the event loop never blocks. Only asymmetric algorithms from
the configured list are accepted (never ``none`` or HS*), and the key type must fit the
algorithm (RFC 8725 §2.1). Every failure has a stable ``reason``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import structlog

from .config import ConfigError

__all__ = [
    "CallerSettings",
    "JwksCache",
    "OidcSettings",
    "TokenError",
    "TokenVerifier",
    "UserTokenSettings",
    "looks_like_jwt",
    "parse_oidc",
    "roles_from_claims",
]

log = structlog.get_logger("proof_messenger.oidc")

SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_MAX_TOKEN = 16 * 1024
_MAX_ROLES = 256
_RELAY_SCOPES = frozenset(
    {"verify", "keys:read", "keys:write", "audit:read", "approvals", "webhooks"}
)


class TokenError(Exception):
    """A bearer or user token was refused; ``reason`` is stable, ``detail`` explains."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class IdpUnavailable(TokenError):
    """The IdP's keys could not be fetched and none are cached (the relay answers 503)."""


# --- settings --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CallerSettings:
    audience: tuple[str, ...]
    scope_map: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UserTokenSettings:
    audience: tuple[str, ...]
    role_claims: tuple[str, ...] = ("roles", "groups")


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_seconds: int = 30
    jwks_cache_seconds: float = 300.0
    jwks_min_refresh_seconds: float = 10.0
    http_timeout_seconds: float = 5.0
    callers: CallerSettings | None = None
    user_tokens: UserTokenSettings | None = None


def parse_oidc(raw: Any, where: str = "oidc") -> OidcSettings | None:
    """Validate the ``oidc:`` section (None when absent); errors name the setting."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    known = {
        "issuer",
        "jwks_uri",
        "algorithms",
        "leeway_seconds",
        "jwks_cache_seconds",
        "jwks_min_refresh_seconds",
        "http_timeout_seconds",
        "callers",
        "user_tokens",
    }
    _no_unknown(raw, known, where)
    issuer = raw.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise ConfigError(f"{where}.issuer: required, the IdP's issuer URL")
    _check_url(issuer, f"{where}.issuer")
    jwks_uri = raw.get("jwks_uri")
    if jwks_uri is not None:
        if not isinstance(jwks_uri, str):
            raise ConfigError(f"{where}.jwks_uri: must be a URL")
        _check_url(jwks_uri, f"{where}.jwks_uri")
    algorithms = raw.get("algorithms", ["RS256", "ES256"])
    if (
        not isinstance(algorithms, list)
        or not algorithms
        or not all(isinstance(a, str) and a in SUPPORTED_ALGORITHMS for a in algorithms)
    ):
        raise ConfigError(
            f"{where}.algorithms: a non-empty list of {', '.join(sorted(SUPPORTED_ALGORITHMS))}"
        )
    callers = raw.get("callers")
    users = raw.get("user_tokens")
    if callers is None and users is None:
        raise ConfigError(f"{where}: configure callers, user_tokens or both")
    return OidcSettings(
        issuer=issuer,
        jwks_uri=jwks_uri,
        algorithms=tuple(algorithms),
        leeway_seconds=int(_number(raw, "leeway_seconds", 30, 0, 600, where)),
        jwks_cache_seconds=_number(raw, "jwks_cache_seconds", 300, 1, 86400, where),
        jwks_min_refresh_seconds=_number(raw, "jwks_min_refresh_seconds", 10, 0, 3600, where),
        http_timeout_seconds=_number(raw, "http_timeout_seconds", 5, 0.1, 60, where),
        callers=None if callers is None else _callers(callers, f"{where}.callers"),
        user_tokens=None if users is None else _users(users, f"{where}.user_tokens"),
    )


def _no_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown setting")


def _number(
    raw: Mapping[str, Any], name: str, default: float, low: float, high: float, where: str
) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{where}.{name}: must be a number from {low:g} to {high:g}")
    return float(value)


def _check_url(url: str, where: str) -> None:
    """HTTPS, except for a loopback IdP (tests, a sidecar)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ConfigError(f"{where}: must be an https:// URL (http:// only on loopback)")


def _audiences(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: required, a string or a list of strings")


def _callers(raw: Any, where: str) -> CallerSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    _no_unknown(raw, {"audience", "scope_map"}, where)
    scope_map = raw.get("scope_map") or {}
    if not isinstance(scope_map, Mapping):
        raise ConfigError(f"{where}.scope_map: must map IdP scopes to relay scopes")
    for idp_scope, ours in scope_map.items():
        if not isinstance(idp_scope, str) or ours not in _RELAY_SCOPES:
            raise ConfigError(
                f"{where}.scope_map.{idp_scope}: must be one of {', '.join(sorted(_RELAY_SCOPES))}"
            )
    return CallerSettings(_audiences(raw.get("audience"), f"{where}.audience"), dict(scope_map))


def _users(raw: Any, where: str) -> UserTokenSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    _no_unknown(raw, {"audience", "role_claims"}, where)
    claims = raw.get("role_claims", ["roles", "groups"])
    if not isinstance(claims, list) or not all(isinstance(c, str) and c for c in claims):
        raise ConfigError(f"{where}.role_claims: must be a list of claim names (dotted paths)")
    return UserTokenSettings(_audiences(raw.get("audience"), f"{where}.audience"), tuple(claims))


# --- JWKS --------------------------------------------------------------------------------------
class JwksCache:
    """The issuer's signing keys by ``kid``, refreshed on age and on unknown ``kid``."""

    def __init__(
        self,
        settings: OidcSettings,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._client = client or httpx.AsyncClient(
            timeout=settings.http_timeout_seconds, follow_redirects=False
        )
        self._clock = clock
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._parsed: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._failed_at: float | None = None  # last failed fetch while no keys were cached
        self._jwks_uri = settings.jwks_uri
        self._lock = asyncio.Lock()
        self.fetches = 0  # successful fetches
        self.attempts = 0  # fetches tried

    async def close(self) -> None:
        await self._client.aclose()

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK:
        await self._refresh(min_age=self.settings.jwks_cache_seconds)
        jwk = self._lookup(kid)
        if jwk is None:
            # Maybe the IdP rotated its keys: refetch, but not more than once per interval.
            await self._refresh(min_age=self.settings.jwks_min_refresh_seconds)
            jwk = self._lookup(kid)
        if jwk is None:
            raise TokenError(
                "unknown_signing_key",
                f"the token's key id {kid!r} is not in the issuer's JWKS"
                if kid
                else "the token names no key id and the JWKS has more than one key",
            )
        return self._parse(kid, jwk, alg)

    def _lookup(self, kid: str | None) -> dict[str, Any] | None:
        if kid is not None:
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    def _parse(self, kid: str | None, jwk: dict[str, Any], alg: str) -> jwt.PyJWK:
        cached = self._parsed.get((kid, alg))
        if cached is not None:
            return cached
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
            raise TokenError("key_algorithm_mismatch", f"key {kid!r} is not for {alg} signatures")
        kty = jwk.get("kty")
        fits = (
            (alg.startswith(("RS", "PS")) and kty == "RSA")
            or (alg in _EC_CURVES and kty == "EC" and jwk.get("crv") == _EC_CURVES[alg])
            or (alg == "EdDSA" and kty == "OKP")
        )
        if not fits:
            raise TokenError(
                "key_algorithm_mismatch", f"key {kid!r} ({kty}) cannot verify {alg} signatures"
            )
        try:
            parsed = jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWTError as exc:
            raise TokenError("unknown_signing_key", f"key {kid!r} is unusable: {exc}") from exc
        self._parsed[(kid, alg)] = parsed
        return parsed

    async def _refresh(self, *, min_age: float) -> None:
        """Fetch the JWKS unless the last fetch (or failed attempt) is younger than ``min_age``."""
        if self._fetched_at is not None and self._clock() - self._fetched_at < min_age:
            return
        async with self._lock:
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < min_age:
                return  # another request refreshed while we waited for the lock
            backoff = max(self.settings.jwks_min_refresh_seconds, 1.0)
            if self._failed_at is not None and now - self._failed_at < backoff:
                # The IdP was unreachable a moment ago: do not queue a fetch per request.
                raise IdpUnavailable(
                    "idp_unavailable", "the identity provider's keys cannot be fetched"
                )
            self.attempts += 1
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError) as exc:
                log.error("oidc.jwks_fetch_failed", error=str(exc)[:300])
                if not self._keys:
                    self._failed_at = now
                    raise IdpUnavailable(
                        "idp_unavailable", "the identity provider's keys cannot be fetched"
                    ) from exc
                self._fetched_at = now  # keep serving cached keys; retry after the interval
                return
            self._keys = keys
            self._parsed.clear()
            self._fetched_at = now
            self._failed_at = None
            self.fetches += 1
            log.info("oidc.jwks_fetched", keys=len(keys))

    async def _fetch(self) -> dict[str | None, dict[str, Any]]:
        if self._jwks_uri is None:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = await self._get_json(url)
            if doc.get("issuer") != self.settings.issuer:
                raise ValueError(f"discovery document names issuer {doc.get('issuer')!r}")
            uri = doc.get("jwks_uri")
            if not isinstance(uri, str):
                raise ValueError("discovery document has no jwks_uri")
            _check_url(uri, "jwks_uri (from discovery)")
            self._jwks_uri = uri
        body = await self._get_json(self._jwks_uri)
        raw_keys = body.get("keys")
        if not isinstance(raw_keys, list):
            raise ValueError("JWKS has no 'keys' list")
        keys: dict[str | None, dict[str, Any]] = {}
        for entry in raw_keys[:100]:
            if isinstance(entry, dict) and entry.get("kty") in ("RSA", "EC", "OKP"):
                kid = entry.get("kid")
                keys[kid if isinstance(kid, str) else None] = entry
        return keys

    async def _get_json(self, url: str) -> dict[str, Any]:
        response = await self._client.get(url, headers={"accept": "application/json"})
        response.raise_for_status()
        if len(response.content) > 256 * 1024:
            raise ValueError(f"{url}: document too large")
        doc = response.json()
        if not isinstance(doc, dict):
            raise ValueError(f"{url}: not a JSON object")
        return doc


# --- tokens ------------------------------------------------------------------------------------
def looks_like_jwt(token: str) -> bool:
    """A compact JWS (``eyJ...`` header, three segments); API keys start ``pmk_``."""
    return token.startswith("eyJ") and token.count(".") == 2


class TokenVerifier:
    def __init__(self, settings: OidcSettings, jwks: JwksCache) -> None:
        self.settings = settings
        self.jwks = jwks

    async def verify(self, token: str, audience: tuple[str, ...]) -> dict[str, Any]:
        """The token's claims after signature, issuer, audience and time checks."""
        if len(token) > _MAX_TOKEN or not looks_like_jwt(token):
            raise TokenError("malformed_token", "not a compact JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("malformed_token", f"the token header is invalid: {exc}") from exc
        alg = header.get("alg")
        if alg not in self.settings.algorithms:
            raise TokenError(
                "disallowed_algorithm",
                f"algorithm {alg!r} is not allowed (allowed: {', '.join(self.settings.algorithms)})",
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed_token", "the token's kid is not a string")
        key = await self.jwks.key_for(kid, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=list(audience),
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token_expired", "the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenError("token_not_yet_valid", "the token is not valid yet (nbf/iat)") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError("invalid_token_signature", "the token's signature is invalid") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError(
                "wrong_issuer", f"the token was not issued by {self.settings.issuer}"
            ) from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError(
                "wrong_audience", f"the token's audience is not {' or '.join(audience)}"
            ) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError("missing_claim", f"the token has no {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            raise TokenError("invalid_token", f"the token is invalid: {exc}") from exc
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise TokenError("missing_claim", "the token's sub is not a non-empty string")
        return claims


def scopes_from_claims(claims: Mapping[str, Any], callers: CallerSettings) -> tuple[str, ...]:
    """Relay scopes granted by ``scope`` (space-separated) or ``scp`` (list or string)."""
    raw: list[str] = []
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            raw.extend(value.split())
        elif isinstance(value, list):
            raw.extend(v for v in value if isinstance(v, str))
    granted = {callers.scope_map.get(s, s) for s in raw}
    return tuple(sorted(granted & _RELAY_SCOPES))


def roles_from_claims(claims: Mapping[str, Any], names: tuple[str, ...]) -> frozenset[str]:
    """Roles from the configured claims (dotted paths such as ``realm_access.roles``)."""
    roles: set[str] = set()
    for name in names:
        value: Any = claims
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            roles.update(v for v in value if isinstance(v, str) and 0 < len(v) <= 128)
    if len(roles) > _MAX_ROLES:
        raise TokenError("too_many_roles", f"the token carries more than {_MAX_ROLES} roles")
    return frozenset(roles)
