"""Passkey enrolment: the WebAuthn registration ceremony, bound to a subject.

1. The backend (API key, scope ``keys:write``) calls ``POST /webauthn/register/options``
   with ``{sub, display_name}``. The relay stores a one-use ceremony (challenge and
   options) under the SHA-256 of a fresh 256-bit token and answers with the options and a
   ``registration_url`` (``/register?token=...``) to give to that user only.
2. The enrolment page fetches the options with the token, runs ``navigator.credentials
   .create`` (``registerPasskey`` in proof-messenger.js) and posts the response with the
   token to ``POST /webauthn/register/verify``.
3. The relay consumes the ceremony (compare-and-set: one use, also across instances),
   verifies the attestation with py_webauthn (challenge, origin, RP id = audience, UP, UV
   when configured, ES256 only) and registers the credential as a ``webauthn.ES256`` key:
   kid = base64url(credential id), DER SPKI public key, sign count, transports and
   attestation format. It is revoked like any key (``DELETE /keys/{kid}``).

The token is what stops a random visitor from binding a passkey to someone else's
subject; it is stored only as a hash and lives ten minutes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..protocol import ALG_WEBAUTHN_ES256, b64u_decode, b64u_encode
from ..store.base import DuplicateKey, KeyRecord, RegistrationChallenge
from .http import decode_model, read_body, resource
from .openapi import register_paths
from .problems import HTTPProblem, json_response
from .routes.keys import _check_sub, key_view
from .service import iso
from .state import RelayState, relay_state

__all__ = ["install"]

# py_webauthn (with its asn1crypto, cbor2 and pyOpenSSL imports, about 25 MB and 0.2 s)
# is imported by the two handlers that need it, on the first enrolment: most relays
# never enrol a passkey in most worker lifetimes.

log = structlog.get_logger("proof_messenger.webauthn")

CEREMONY_SECONDS = 600
BROWSER_TIMEOUT_MS = 300_000
_TRANSPORTS = frozenset({"usb", "nfc", "ble", "internal", "hybrid", "cable", "smart-card"})


class OptionsRequest(msgspec.Struct, forbid_unknown_fields=True):
    sub: str
    display_name: str | None = None


class VerifyRequest(msgspec.Struct, forbid_unknown_fields=True):
    token: str
    credential: dict[str, Any]


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _origins(state: RelayState) -> list[str]:
    return sorted(state.service.verifier.settings.webauthn_origins)


async def register_options(request: Request) -> Response:
    from webauthn import generate_registration_options, options_to_json
    from webauthn.helpers.cose import COSEAlgorithmIdentifier
    from webauthn.helpers.structs import (
        AuthenticatorSelectionCriteria,
        PublicKeyCredentialDescriptor,
        ResidentKeyRequirement,
        UserVerificationRequirement,
    )

    state = relay_state(request)
    await state.authenticate(request, "keys:write")
    body = decode_model(
        await read_body(request, 8 * 1024, state.settings.limits.request_timeout_seconds),
        OptionsRequest,
    )
    _check_sub(body.sub)
    display = body.display_name or body.sub
    if not 1 <= len(display) <= 128:
        raise HTTPProblem(
            400, "invalid_request", "Invalid display name", "display_name is 1-128 characters"
        )
    existing = [
        PublicKeyCredentialDescriptor(id=b64u_decode(k.kid))
        for k in await state.store.list_keys(body.sub)
        if k.alg == ALG_WEBAUTHN_ES256 and k.status == "active"
    ]
    wa = state.settings.webauthn
    options = generate_registration_options(
        rp_id=state.settings.audience,
        rp_name=wa.rp_name,
        user_name=body.sub,
        # A random user handle: it must not be personal data (WebAuthn §14.6.1).
        user_id=secrets.token_bytes(32),
        user_display_name=display,
        timeout=BROWSER_TIMEOUT_MS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.REQUIRED
            if wa.require_user_verification
            else UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=existing,
        supported_pub_key_algs=[COSEAlgorithmIdentifier.ECDSA_SHA_256],
    )
    options_json = options_to_json(options)
    token = secrets.token_urlsafe(32)
    now = state.clock()
    await state.store.insert_registration(
        RegistrationChallenge(
            token_hash=_token_hash(token),
            sub=body.sub,
            challenge=options.challenge,
            options_json=options_json,
            created_at=now,
            expires_at=now + CEREMONY_SECONDS,
        )
    )
    await state.service.record_event(
        "webauthn.registration_started", state.client(request), sub=body.sub
    )
    return json_response(
        {
            "options": json.loads(options_json),
            "token": token,
            "registration_url": f"{state.settings.base_url}/register?token={token}",
            "expires_at": iso(now + CEREMONY_SECONDS),
        },
        201,
    )


def _link_problem() -> HTTPProblem:
    return HTTPProblem(
        410,
        "registration_expired",
        "Registration link expired or already used",
        "ask for a new enrolment link",
    )


async def page_options(request: Request) -> Response:
    """The ceremony's options for the enrolment page (token-authenticated, not consumed)."""
    state = relay_state(request)
    token = request.headers.get("x-registration-token") or request.query_params.get("token")
    if not token or len(token) > 128:
        raise _link_problem()
    ceremony = await state.store.get_registration(_token_hash(token), state.clock())
    if ceremony is None:
        raise _link_problem()
    return json_response(
        {
            "options": json.loads(ceremony.options_json),
            "sub": ceremony.sub,
            "expires_at": iso(ceremony.expires_at),
        }
    )


async def register_verify(request: Request) -> Response:
    from webauthn import verify_registration_response
    from webauthn.helpers.cose import COSEAlgorithmIdentifier
    from webauthn.helpers.exceptions import WebAuthnException

    state = relay_state(request)
    body = decode_model(
        await read_body(request, 64 * 1024, state.settings.limits.request_timeout_seconds),
        VerifyRequest,
    )
    if len(body.token) > 128:
        raise _link_problem()
    ceremony = await state.store.consume_registration(_token_hash(body.token), state.clock())
    if ceremony is None:
        raise _link_problem()
    wa = state.settings.webauthn
    client = state.client(request)
    try:
        verified = verify_registration_response(
            credential=body.credential,
            expected_challenge=ceremony.challenge,
            expected_rp_id=state.settings.audience,
            expected_origin=_origins(state),
            require_user_verification=wa.require_user_verification,
            supported_pub_key_algs=[COSEAlgorithmIdentifier.ECDSA_SHA_256],
        )
        der = _spki_from_cose(verified.credential_public_key)
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        detail = f"the passkey could not be registered: {str(exc)[:300]}"
        await state.service.record_event(
            "webauthn.registration_failed",
            client,
            sub=ceremony.sub,
            status="rejected",
            error_code="webauthn_registration_failed",
            detail=detail,
        )
        raise HTTPProblem(
            400, "webauthn_registration_failed", "Passkey registration failed", detail
        ) from exc
    raw_transports = body.credential.get("response", {}).get("transports") or []
    transports = tuple(t for t in raw_transports if isinstance(t, str) and t in _TRANSPORTS)
    record = KeyRecord(
        kid=b64u_encode(verified.credential_id),
        sub=ceremony.sub,
        alg=ALG_WEBAUTHN_ES256,
        public_key=der,
        created_at=state.clock(),
        label="passkey",
        sign_count=verified.sign_count,
        transports=transports,
        attestation_format=str(getattr(verified.fmt, "value", verified.fmt)),
    )
    try:
        await state.store.insert_key(record)
    except DuplicateKey as exc:
        raise HTTPProblem(
            409, "key_exists", "Passkey already registered", f"kid {record.kid} exists"
        ) from exc
    await state.service.record_event(
        "webauthn.registered",
        client,
        sub=record.sub,
        kid=record.kid,
        detail=f"fmt={record.attestation_format} transports={','.join(transports) or '-'} "
        f"uv={verified.user_verified}",
        outbox_payload={"kid": record.kid, "sub": record.sub},
    )
    log.info("webauthn.registered", sub=record.sub, kid=record.kid)
    return json_response(
        {
            **key_view(record),
            "sign_count": record.sign_count,
            "transports": list(record.transports),
            "attestation_format": record.attestation_format,
        },
        201,
        {"Location": f"/keys/{record.kid}"},
    )


def _spki_from_cose(cose_key: bytes) -> bytes:
    """DER SubjectPublicKeyInfo of a COSE EC2 P-256 key (the registry's key format)."""
    from webauthn.helpers import decode_credential_public_key
    from webauthn.helpers.cose import COSECRV

    decoded = decode_credential_public_key(cose_key)
    x, y = getattr(decoded, "x", None), getattr(decoded, "y", None)
    if getattr(decoded, "crv", None) != COSECRV.P256 or x is None or y is None:
        raise ValueError("only ES256 (P-256) passkeys are supported")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    )
    return numbers.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def install(state: RelayState) -> list[Route]:
    register_paths(OPENAPI_PATHS)
    return [
        resource("/webauthn/register/options", GET=page_options, POST=register_options),
        Route("/webauthn/register/verify", register_verify, methods=["POST"]),
    ]


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/webauthn/register/options": {
        "post": {
            "summary": "Start a passkey enrolment for a subject (scope keys:write)",
            "security": [{"apiKey": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["sub"],
                            "properties": {
                                "sub": {"type": "string"},
                                "display_name": {"type": "string"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": {
                    "description": "{options, token, registration_url, expires_at}",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "400": _problem("Invalid subject"),
                "401": _problem("Missing or invalid API key"),
                "403": _problem("The API key lacks keys:write"),
            },
        },
        "get": {
            "summary": "The enrolment page's options (header X-Registration-Token or ?token=)",
            "parameters": [{"name": "token", "in": "query", "schema": {"type": "string"}}],
            "responses": {
                "200": {
                    "description": "{options, sub, expires_at}",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "410": _problem("registration_expired: unknown, used or expired token"),
            },
        },
    },
    "/webauthn/register/verify": {
        "post": {
            "summary": "Finish the enrolment: {token, credential} (registerPasskey output)",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "201": {
                    "description": "The registered key (alg webauthn.ES256)",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "400": _problem("webauthn_registration_failed"),
                "409": _problem("key_exists"),
                "410": _problem("registration_expired"),
            },
        }
    },
}
