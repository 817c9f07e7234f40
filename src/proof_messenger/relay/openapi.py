"""The relay's OpenAPI 3.1 document.

Written out rather than generated from handlers: the wire contract is the product, so
it is stated explicitly and schemathesis holds the running relay to it.
Feature modules add their paths with :func:`register_paths`.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import __version__
from ..protocol.errors import ERROR_CLASSES

__all__ = ["build_spec", "register_paths"]

_extra_paths: dict[str, Any] = {}
_extra_schemas: dict[str, Any] = {}


def register_paths(paths: dict[str, Any], schemas: dict[str, Any] | None = None) -> None:
    _extra_paths.update(paths)
    _extra_schemas.update(schemas or {})


HTTP_CODES = [
    "unauthorized",
    "invalid_api_key",
    "insufficient_scope",
    "rate_limited",
    "payload_too_large",
    "request_timeout",
    "unsupported_media_type",
    "malformed_request",
    "invalid_request",
    "invalid_public_key",
    "key_exists",
    "not_found",
    "method_not_allowed",
    "batch_too_large",
    "store_unavailable",
    "log_integrity",
    "internal_error",
    # passkey enrolment
    "registration_expired",
    "webauthn_registration_failed",
    # identity + policy
    "invalid_token",
    "invalid_user_token",
    "user_token_not_supported",
    "idp_unavailable",
    "unknown_transaction",
]


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def _json(schema_ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


_AUTH_ERRORS = {
    "401": _problem("Missing, malformed, unknown or revoked API key"),
    "403": _problem("The API key lacks the route's scope"),
    "429": _problem("Rate limit exceeded; see Retry-After"),
}

_B64U = {"type": "string", "pattern": "^[A-Za-z0-9_-]*$", "description": "base64url, no padding"}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; `code` is stable and machine-readable.",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "code": {"type": "string", "enum": sorted({*ERROR_CLASSES, *HTTP_CODES})},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "proof_id": {"type": "string"},
            "audit_event_id": {"type": "string"},
            "required_scope": {"type": "string"},
        },
    },
    "ProofEnvelope": {
        "type": "object",
        "description": "Protocol v1 §3 proof envelope (JSON form).",
        "required": ["v", "alg", "kid", "intent", "sig"],
        "additionalProperties": False,
        "properties": {
            "v": {"type": "integer", "const": 1},
            "alg": {"type": "string", "enum": ["ES256", "webauthn.ES256"]},
            "kid": {"type": "string", "minLength": 1},
            "intent": _B64U,
            "sig": _B64U,
            "authenticator_data": _B64U,
            "client_data_json": _B64U,
            "public_key": _B64U,
        },
    },
    "VerifyResult": {
        "type": "object",
        "required": ["valid", "proof_id", "sub", "kid", "context", "verified_at", "audit_event_id"],
        "properties": {
            "valid": {"type": "boolean", "const": True},
            "proof_id": {"type": "string"},
            "sub": {"type": "string"},
            "kid": {"type": "string"},
            "alg": {"type": "string"},
            "context": {"type": "object"},
            "iat": {"type": "integer"},
            "exp": {"type": "integer"},
            "user_verified": {"type": "boolean"},
            "verified_at": {"type": "string", "format": "date-time"},
            "audit_event_id": {"type": "string"},
            "leaf_index": {"type": "integer", "minimum": 0},
        },
    },
    "BatchRequest": {
        "type": "object",
        "required": ["proofs"],
        "properties": {
            "proofs": {
                "type": "array",
                "minItems": 1,
                # No maxItems: the limit is a setting (limits.max_batch, default 100) and
                # more entries are answered 413 batch_too_large, not 400.
                "description": "At most limits.max_batch entries (default 100); more is "
                "413 batch_too_large",
                # Entries are judged one by one: a malformed entry (even a non-object) is a
                # rejection in ``results`` (with its code), not a 400 for the whole batch.
                "items": {
                    "description": "A ProofEnvelope; each entry is verified on its own and a "
                    "malformed one is reported as a rejection in results"
                },
            }
        },
    },
    "BatchResult": {
        "type": "object",
        "required": ["results", "accepted", "rejected"],
        "properties": {
            "results": {"type": "array", "items": {"type": "object"}},
            "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
        },
    },
    "RegisterKey": {
        "type": "object",
        "required": ["sub", "public_key"],
        "additionalProperties": False,
        "properties": {
            "sub": {"type": "string", "minLength": 1, "maxLength": 256},
            "public_key": {
                **_B64U,
                "description": "base64url of a DER SubjectPublicKeyInfo (P-256)",
            },
            "label": {"type": ["string", "null"], "maxLength": 200},
        },
    },
    "Key": {
        "type": "object",
        "required": ["kid", "sub", "alg", "status", "created_at"],
        "properties": {
            "kid": {"type": "string"},
            "sub": {"type": "string"},
            "alg": {"type": "string"},
            "status": {"type": "string", "enum": ["active", "revoked"]},
            "label": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "revoked_at": {"type": ["string", "null"], "format": "date-time"},
            "revoke_reason": {"type": ["string", "null"]},
        },
    },
    "KeyList": {
        "type": "object",
        "required": ["keys"],
        "properties": {"keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}}},
    },
    "RevokeKey": {
        "type": "object",
        "required": ["reason"],
        "additionalProperties": False,
        "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 500}},
    },
    "AuditEvent": {
        "type": "object",
        "required": ["event_id", "seq", "time", "type", "status", "entry_hash", "prev_hash"],
        "properties": {
            "event_id": {"type": "string"},
            "seq": {"type": "integer"},
            "leaf_index": {"type": "integer"},
            "time": {"type": "string", "format": "date-time"},
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["accepted", "rejected", "info"]},
            "sub": {"type": ["string", "null"]},
            "kid": {"type": ["string", "null"]},
            "tx_type": {"type": ["string", "null"]},
            "amount_minor": {"type": ["integer", "null"]},
            "currency": {"type": ["string", "null"]},
            "error_code": {"type": ["string", "null"]},
            "proof_id": {"type": ["string", "null"]},
            "client_ip": {"type": ["string", "null"]},
            "user_agent": {"type": ["string", "null"]},
            "detail": {"type": ["string", "null"]},
            "entry_hash": {"type": "string"},
            "prev_hash": {"type": "string"},
            "context": {},
            "context_error": {"type": "string"},
        },
    },
    "AuditPage": {
        "type": "object",
        "required": ["events", "next_cursor"],
        "properties": {
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEvent"}},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "detail": {"type": "string"}},
    },
}


def _paths() -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"apiKey": []}]
    proof_body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ProofEnvelope"}},
            "application/cbor": {"schema": {"type": "string", "format": "binary"}},
        },
    }
    return {
        "/health": {
            "get": {
                "summary": "Liveness",
                "operationId": "health",
                "tags": ["ops"],
                "responses": {"200": _json("Status", "The process is alive")},
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness",
                "operationId": "ready",
                "tags": ["ops"],
                "responses": {
                    "200": _json("Status", "Store reachable and migrated"),
                    "503": _json("Status", "Not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "tags": ["ops"],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/verify": {
            "post": {
                "summary": "Verify one proof (protocol checks 1-9) and audit the outcome",
                "operationId": "verify",
                "tags": ["proofs"],
                "security": bearer,
                "parameters": [
                    {
                        "name": "require_user_verification",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    }
                ],
                "requestBody": proof_body,
                "responses": {
                    "200": _json("VerifyResult", "Accepted; the audit row is committed"),
                    "400": _problem("Malformed envelope or intent (check 1-2)"),
                    **_AUTH_ERRORS,
                    "403": _problem("key_revoked, policy_denied, or the API key lacks the scope"),
                    "408": _problem("The body did not arrive in time"),
                    "409": _problem("replayed: this proof was already accepted"),
                    "413": _problem("Body too large"),
                    "415": _problem("Not JSON or CBOR"),
                    "422": _problem("The proof failed verification"),
                    "503": _problem("The audit store is unavailable; nothing was accepted"),
                },
            }
        },
        "/verify/batch": {
            "post": {
                "summary": "Verify up to 100 proofs; one result each, in order",
                "operationId": "verifyBatch",
                "tags": ["proofs"],
                "security": bearer,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/BatchRequest"}
                        }
                    },
                },
                "responses": {
                    "200": _json("BatchResult", "One result per proof"),
                    "400": _problem("Malformed batch"),
                    **_AUTH_ERRORS,
                    "408": _problem("The body did not arrive in time"),
                    "413": _problem("Too many proofs or body too large"),
                    "415": _problem("Not JSON or CBOR"),
                    "503": _problem("Store unavailable"),
                },
            }
        },
        "/keys": {
            "post": {
                "summary": "Register a public key for a subject",
                "operationId": "registerKey",
                "tags": ["keys"],
                "security": bearer,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/RegisterKey"}}
                    },
                },
                "responses": {
                    "201": _json("Key", "Registered"),
                    "400": _problem("Invalid request or public key"),
                    **_AUTH_ERRORS,
                    "408": _problem("The body did not arrive in time"),
                    "409": _problem("Already registered"),
                    "413": _problem("Body too large"),
                },
            },
            "get": {
                "summary": "List keys, optionally of one subject",
                "operationId": "listKeys",
                "tags": ["keys"],
                "security": bearer,
                "parameters": [
                    {
                        "name": "sub",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 256,
                            "pattern": "^[^\\x00-\\x1f\\x7f]+$",
                        },
                    }
                ],
                "responses": {
                    "200": _json("KeyList", "Keys"),
                    "400": _problem("Invalid subject"),
                    **_AUTH_ERRORS,
                },
            },
        },
        "/keys/{kid}": {
            "parameters": [
                {"name": "kid", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": {
                "summary": "One key",
                "operationId": "getKey",
                "tags": ["keys"],
                "security": bearer,
                "responses": {
                    "200": _json("Key", "The key"),
                    **_AUTH_ERRORS,
                    "404": _problem("No such key"),
                },
            },
            "delete": {
                "summary": "Revoke a key (with a reason); its proofs are refused from now on",
                "operationId": "revokeKey",
                "tags": ["keys"],
                "security": bearer,
                "parameters": [
                    {
                        "name": "reason",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 500},
                    }
                ],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/RevokeKey"}}
                    },
                },
                "responses": {
                    "200": _json("Key", "Revoked"),
                    "400": _problem("No reason"),
                    **_AUTH_ERRORS,
                    "408": _problem("The body did not arrive in time"),
                    "404": _problem("No such key"),
                    "413": _problem("Body too large"),
                },
            },
        },
        "/audit": {
            "get": {
                "summary": "Audit events, newest first, with filters and cursor pagination",
                "operationId": "listAudit",
                "tags": ["audit"],
                "security": bearer,
                "parameters": [
                    {
                        "name": "start",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "Unix seconds or ISO 8601",
                    },
                    {"name": "end", "in": "query", "required": False, "schema": {"type": "string"}},
                    {
                        "name": "sub",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 256},
                    },
                    {
                        "name": "type",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 64},
                    },
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["accepted", "rejected", "info"]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 128},
                    },
                ],
                "responses": {
                    "200": _json("AuditPage", "A page of events"),
                    "400": _problem("Invalid filter or cursor"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/audit/{event_id}": {
            "get": {
                "summary": "One audit event with its decrypted context",
                "operationId": "getAudit",
                "tags": ["audit"],
                "security": bearer,
                "parameters": [
                    {
                        "name": "event_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json("AuditEvent", "The event"),
                    **_AUTH_ERRORS,
                    "404": _problem("No such event"),
                },
            }
        },
    }


def build_spec(server_url: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Proof-Messenger relay",
            "version": __version__,
            "description": (
                "Verifies non-repudiable approvals of exact transactions (protocol v1), "
                "rejects replays, expired, revoked and policy-denied proofs, and keeps a "
                "tamper-evident, encrypted audit log. Errors are RFC 9457 problem+json "
                "with a stable `code`."
            ),
        },
        "paths": {**_paths(), **copy.deepcopy(_extra_paths)},
        "components": {
            "schemas": {**SCHEMAS, **copy.deepcopy(_extra_schemas)},
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "API key created with `proof-messenger apikey create`",
                }
            },
        },
    }
    if server_url:
        spec["servers"] = [{"url": server_url}]
    return spec
