"""Webhooks on the relay: the outbox hook, the delivery worker and ``/webhooks`` routes.

Installed by ``relay/app.py`` (``install(state) -> routes``). Every event in
:data:`~proof_messenger.webhooks.EVENT_TYPES` handed to ``service.outbox_for`` — by the
verification pipeline, ``record_event(..., outbox_payload=...)`` or any feature module —
is written to the outbox in the audit row's transaction, whatever feature produced it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import uuid
from typing import Any
from urllib.parse import urlsplit

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..relay.config import ConfigError
from ..store.base import DuplicateKey, OutboxEvent, WebhookDelivery, WebhookSubscription
from ..webhooks import EVENT_TYPES
from ..webhooks.config import (
    MIN_SECRET_BYTES,
    WebhookSettings,
    check_events,
    check_url,
    parse_webhook_settings,
)
from ..webhooks.worker import DeliveryWorker
from .http import decode_model, query_int, read_body, resource
from .openapi import register_paths
from .problems import HTTPProblem, json_response
from .service import iso
from .state import RelayState, relay_state

__all__ = ["install"]

log = structlog.get_logger("proof_messenger.webhooks")
_SCOPE = "webhooks"
_STATUSES = ("pending", "delivered", "dead")
_EVENTS = frozenset(EVENT_TYPES)


class RotateSecret(msgspec.Struct, forbid_unknown_fields=True):
    secret: str | None = None


class CreateWebhook(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    events: list[str]
    secret: str | None = None
    id: str | None = None


def subscription_view(sub: WebhookSubscription) -> dict[str, Any]:
    return {
        "id": sub.id,
        "url": sub.url,
        "events": list(sub.events),
        "source": sub.source,
        "created_at": iso(sub.created_at),
    }


def delivery_view(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "subscription_id": d.subscription_id,
        "event_type": d.event_type,
        "audit_event_id": d.event_id,
        "status": d.status,
        "attempts": d.attempts,
        "created_at": iso(d.created_at),
        "next_attempt_at": iso(d.next_attempt_at) if d.status == "pending" else None,
        "delivered_at": iso(d.delivered_at) if d.delivered_at else None,
        "last_status": d.last_status,
        "last_error": d.last_error,
    }


_running_loop = asyncio.get_running_loop

#: How long after an event is written the delivery worker looks for it.
_WAKE_DELAY = 0.05


def make_outbox_hook(worker: DeliveryWorker | None) -> Any:
    """The generic ``service.outbox_for``: any known event type, any JSON payload."""

    # One pending wake-up timer at a time. It fires no earlier than _WAKE_DELAY after the
    # latest event (re-arming itself while events keep coming), and at least every
    # _WAKE_DELAY under sustained load. A timer per event woke the worker for every proof,
    # so under load it ran a write transaction (an fsync) back to back with the audit
    # commits; now it runs about 20 times per second at most.
    timer: asyncio.TimerHandle | None = None
    last_event = 0.0

    def fire() -> None:
        nonlocal timer
        assert worker is not None
        loop = asyncio.get_running_loop()
        due = last_event + _WAKE_DELAY
        timer = loop.call_at(due, fire) if due > loop.time() + 0.001 else None
        worker.wake()

    def outbox_for(event_type: str, payload: dict[str, Any]) -> list[OutboxEvent]:
        # Called for every proof: only the event and a cheap timer touch. The payload
        # is the caller's own dict (for a verification: its answer), never copied; the
        # store encodes it in the commit, and only if a subscription wants the event.
        nonlocal timer, last_event
        if event_type not in _EVENTS:
            return []
        if worker is not None:
            # The row commits a few ms later (group commit); look again shortly after.
            # (Without a running loop the worker's regular poll picks the event up.)
            try:
                loop = _running_loop()
            except RuntimeError:
                pass
            else:
                last_event = loop.time()
                if timer is None:
                    timer = loop.call_later(_WAKE_DELAY, fire)
        return [OutboxEvent(event_type, payload)]

    return outbox_for


def _encrypt_secret(state: RelayState, sub_id: str, secret: str) -> tuple[str, bytes]:
    return state.keyring.encrypt(secret.encode("utf-8"), sub_id.encode("utf-8"))


async def _sync_configured(state: RelayState, settings: WebhookSettings) -> None:
    """Upsert YAML subscriptions; soft-delete config subscriptions no longer in the file."""
    now = state.clock()
    wanted = {s.id for s in settings.subscriptions}
    existing = {s.id: s for s in await state.store.list_webhook_subscriptions()}
    for cfg in settings.subscriptions:
        key_id, blob = _encrypt_secret(state, cfg.id, cfg.secret)
        prior = existing.get(cfg.id)
        await state.store.upsert_webhook_subscription(
            WebhookSubscription(
                id=cfg.id,
                url=cfg.url,
                events=cfg.events,
                secret_key_id=key_id,
                secret_ct=blob,
                source="config",
                created_at=prior.created_at if prior else now,
            )
        )
    for sub in existing.values():
        if sub.source == "config" and sub.id not in wanted:
            await state.store.delete_webhook_subscription(sub.id, now)
    log.info("webhook.config_synced", subscriptions=sorted(wanted))


async def _run_worker(state: RelayState, settings: WebhookSettings, worker: DeliveryWorker) -> None:
    while True:
        try:
            await _sync_configured(state, settings)
            break
        except Exception as exc:  # the store may still be coming up; keep trying
            log.warning("webhook.config_sync_failed", error=str(exc)[:300])
            await asyncio.sleep(settings.poll_interval_seconds)
    with contextlib.suppress(Exception):  # no subscription yet: httpx loads on first use
        if settings.subscriptions or await state.store.list_webhook_subscriptions():
            worker.warm()
    try:
        await worker.run()
    finally:
        await worker.close()


def install(state: RelayState) -> list[Route]:
    settings = parse_webhook_settings(
        state.settings.extra.get("webhooks")
    )  # ConfigError stops start-up
    worker: DeliveryWorker | None = None
    if settings.enabled:
        worker = DeliveryWorker(state.store, state.keyring, settings, clock=state.clock)
        state.service.outbox_for = make_outbox_hook(worker)
        state.background.append(asyncio.create_task(_run_worker(state, settings, worker)))
    state.features["webhooks"] = {"settings": settings, "worker": worker}
    register_paths(OPENAPI_PATHS, OPENAPI_SCHEMAS)
    return [
        resource("/webhooks", GET=list_webhooks, POST=create_webhook),
        resource("/webhooks/{id}", GET=get_webhook, DELETE=delete_webhook),
        Route("/webhooks/{id}/secret", rotate_secret, methods=["POST"]),
        Route("/webhooks/{id}/deliveries", list_deliveries, methods=["GET"]),
        Route("/webhooks/{id}/deliveries/{delivery_id}/replay", replay_delivery, methods=["POST"]),
    ]


# --- handlers ----------------------------------------------------------------------------------


def _invalid(detail: str) -> HTTPProblem:
    return HTTPProblem(400, "invalid_request", "Invalid webhook", detail)


async def _audit(
    state: RelayState,
    request: Request,
    event_type: str,
    sub: WebhookSubscription,
    extra: str | None = None,
) -> None:
    """Who pointed which events at which receiver is security-relevant: audit it."""
    where = urlsplit(sub.url)
    detail = f"webhook={sub.id} to={where.scheme}://{where.netloc}"
    await state.service.record_event(
        event_type, state.client(request), detail=f"{detail} {extra}" if extra else detail
    )


def _new_secret(given: str | None) -> str:
    secret = given if given is not None else "whsec_" + secrets.token_urlsafe(32)
    if not MIN_SECRET_BYTES <= len(secret.encode("utf-8")) <= 256:
        raise _invalid(f"secret: {MIN_SECRET_BYTES}-256 bytes (omit it to have one generated)")
    return secret


async def create_webhook(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, _SCOPE)
    body = decode_model(
        await read_body(request, 16 * 1024, state.settings.limits.request_timeout_seconds),
        CreateWebhook,
    )
    try:
        url = check_url(body.url, "url")
        events = check_events(body.events, "events")
    except ConfigError as exc:
        raise _invalid(str(exc)) from exc
    sub_id = body.id if body.id is not None else "wh_" + uuid.uuid4().hex
    if not 1 <= len(sub_id) <= 64 or not all(c.isalnum() or c in "._-" for c in sub_id):
        raise _invalid("id: 1-64 characters of A-Z a-z 0-9 . _ -")
    secret = _new_secret(body.secret)
    key_id, blob = _encrypt_secret(state, sub_id, secret)
    sub = WebhookSubscription(
        id=sub_id,
        url=url,
        events=events,
        secret_key_id=key_id,
        secret_ct=blob,
        source="api",
        created_at=state.clock(),
    )
    try:
        await state.store.insert_webhook_subscription(sub)
    except DuplicateKey as exc:
        raise HTTPProblem(
            409, "invalid_request", "Webhook exists", f"a webhook with id {sub_id} exists"
        ) from exc
    await _audit(state, request, "webhook.created", sub, f"events={','.join(events)}")
    log.info("webhook.created", subscription_id=sub_id, events=list(events))
    worker: DeliveryWorker | None = state.features.get("webhooks", {}).get("worker")
    if worker is not None:
        worker.warm()
    # The secret is shown once, here; it is stored encrypted and never returned again.
    return json_response(
        {**subscription_view(sub), "secret": secret}, 201, {"Location": f"/webhooks/{sub_id}"}
    )


async def list_webhooks(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, _SCOPE)
    subs = await state.store.list_webhook_subscriptions()
    return json_response({"webhooks": [subscription_view(s) for s in subs]})


async def _subscription(state: RelayState, request: Request) -> WebhookSubscription:
    sub_id = request.path_params["id"]
    sub = await state.store.get_webhook_subscription(sub_id) if len(sub_id) <= 64 else None
    if sub is None:
        raise HTTPProblem(404, "not_found", "No such webhook")
    return sub


async def get_webhook(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, _SCOPE)
    return json_response(subscription_view(await _subscription(state, request)))


async def delete_webhook(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, _SCOPE)
    sub = await _subscription(state, request)
    await state.store.delete_webhook_subscription(sub.id, state.clock())
    await _audit(state, request, "webhook.deleted", sub)
    log.info("webhook.deleted", subscription_id=sub.id)
    return Response(status_code=204)


async def rotate_secret(request: Request) -> Response:
    """Replace the signing secret (given, or generated); shown once in the answer.

    Zero-downtime rotation: make the receiver accept both secrets, call this with the new
    one, then drop the old one on the receiver.
    """
    state = relay_state(request)
    await state.authenticate(request, _SCOPE)
    sub = await _subscription(state, request)
    if sub.source == "config":
        raise _invalid("this subscription is defined in the relay config: change its secret there")
    raw = await read_body(request, 4096, state.settings.limits.request_timeout_seconds)
    secret = _new_secret(decode_model(raw, RotateSecret).secret if raw.strip() else None)
    key_id, blob = _encrypt_secret(state, sub.id, secret)
    await state.store.upsert_webhook_subscription(
        dataclasses.replace(sub, secret_key_id=key_id, secret_ct=blob)
    )
    await _audit(state, request, "webhook.secret_rotated", sub)
    log.info("webhook.secret_rotated", subscription_id=sub.id)
    return json_response({**subscription_view(sub), "secret": secret})


async def list_deliveries(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, _SCOPE)
    sub = await _subscription(state, request)
    status = request.query_params.get("status") or None
    if status is not None and status not in _STATUSES:
        raise HTTPProblem(
            400, "invalid_request", "Invalid query", "status must be pending, delivered or dead"
        )
    limit = query_int(request, "limit", 50, 1, 500)
    cursor = request.query_params.get("cursor") or None
    try:
        page = await state.store.list_deliveries(sub.id, status, limit, cursor)
    except ValueError as exc:
        raise HTTPProblem(400, "invalid_request", "Invalid cursor", str(exc)) from exc
    return json_response(
        {"deliveries": [delivery_view(d) for d in page.deliveries], "next_cursor": page.next_cursor}
    )


async def replay_delivery(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, _SCOPE)
    sub = await _subscription(state, request)
    delivery_id = request.path_params["delivery_id"]
    existing = await state.store.get_delivery(delivery_id) if len(delivery_id) <= 64 else None
    if existing is None or existing.subscription_id != sub.id:
        raise HTTPProblem(404, "not_found", "No such delivery")
    delivery = await state.store.replay_delivery(delivery_id, state.clock())
    if delivery is None:
        raise HTTPProblem(404, "not_found", "No such delivery")
    worker = state.features.get("webhooks", {}).get("worker")
    if worker is not None:
        worker.wake()
    await _audit(state, request, "webhook.replayed", sub, f"delivery={delivery_id}")
    log.info("webhook.replayed", delivery_id=delivery_id, subscription_id=sub.id)
    return json_response(delivery_view(delivery), 202)


# --- OpenAPI -----------------------------------------------------------------------------------

_BEARER: list[dict[str, list[str]]] = [{"apiKey": []}]


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


_AUTH = {
    "401": _problem("Missing or invalid API key"),
    "403": _problem("The API key lacks the webhooks scope"),
    "429": _problem("Rate limit exceeded; see Retry-After"),
}
_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "WebhookCreate": {
        "type": "object",
        "required": ["url", "events"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "format": "uri", "maxLength": 2048},
            "events": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "enum": list(EVENT_TYPES)},
            },
            "secret": {
                "type": ["string", "null"],
                "minLength": MIN_SECRET_BYTES,
                "maxLength": 256,
                "description": "absent or null: a secret is generated",
            },
            "id": {
                "type": ["string", "null"],
                "pattern": "^[A-Za-z0-9._-]{1,64}$",
                "description": "absent or null: an id is generated",
            },
        },
    },
    "Webhook": {
        "type": "object",
        "required": ["id", "url", "events", "source", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "url": {"type": "string"},
            "events": {"type": "array", "items": {"type": "string"}},
            "source": {"type": "string", "enum": ["api", "config"]},
            "created_at": {"type": "string", "format": "date-time"},
            "secret": {"type": "string", "description": "Only in the 201 answer, once."},
        },
    },
    "WebhookList": {
        "type": "object",
        "properties": {
            "webhooks": {"type": "array", "items": {"$ref": "#/components/schemas/Webhook"}}
        },
    },
    "WebhookDelivery": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "subscription_id": {"type": "string"},
            "event_type": {"type": "string"},
            "audit_event_id": {"type": "string"},
            "status": {"type": "string", "enum": list(_STATUSES)},
            "attempts": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
            "delivered_at": {"type": ["string", "null"], "format": "date-time"},
            "last_status": {"type": ["integer", "null"]},
            "last_error": {"type": ["string", "null"]},
        },
    },
    "WebhookDeliveryPage": {
        "type": "object",
        "properties": {
            "deliveries": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/WebhookDelivery"},
            },
            "next_cursor": {"type": ["string", "null"]},
        },
    },
}

OPENAPI_PATHS: dict[str, Any] = {
    "/webhooks": {
        "post": {
            "summary": "Subscribe a URL to events; the signing secret is returned once",
            "operationId": "createWebhook",
            "tags": ["webhooks"],
            "security": _BEARER,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/WebhookCreate"}}
                },
            },
            "responses": {
                "201": _json("Webhook", "Created (with the secret, shown only now)"),
                "400": _problem("Invalid URL, events or secret"),
                "408": _problem("The body did not arrive in time"),
                "409": _problem("A webhook with this id exists"),
                "413": _problem("Body too large"),
                **_AUTH,
            },
        },
        "get": {
            "summary": "List webhook subscriptions (never their secrets)",
            "operationId": "listWebhooks",
            "tags": ["webhooks"],
            "security": _BEARER,
            "responses": {"200": _json("WebhookList", "Subscriptions"), **_AUTH},
        },
    },
    "/webhooks/{id}": {
        "parameters": [_ID_PARAM],
        "get": {
            "summary": "One subscription",
            "operationId": "getWebhook",
            "tags": ["webhooks"],
            "security": _BEARER,
            "responses": {
                "200": _json("Webhook", "The subscription"),
                **_AUTH,
                "404": _problem("No such webhook"),
            },
        },
        "delete": {
            "summary": "Delete a subscription (pending deliveries stop)",
            "operationId": "deleteWebhook",
            "tags": ["webhooks"],
            "security": _BEARER,
            "responses": {
                "204": {"description": "Deleted"},
                **_AUTH,
                "404": _problem("No such webhook"),
            },
        },
    },
    "/webhooks/{id}/secret": {
        "parameters": [_ID_PARAM],
        "post": {
            "summary": "Rotate the signing secret (given or generated); shown once",
            "operationId": "rotateWebhookSecret",
            "tags": ["webhooks"],
            "security": _BEARER,
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "secret": {
                                    "type": ["string", "null"],
                                    "minLength": MIN_SECRET_BYTES,
                                    "maxLength": 256,
                                    "description": "absent or null: a new secret is generated",
                                }
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json("Webhook", "The subscription with its new secret (shown once)"),
                "400": _problem("Invalid secret, or a config-defined subscription"),
                "408": _problem("The body did not arrive in time"),
                "413": _problem("Body too large"),
                **_AUTH,
                "404": _problem("No such webhook"),
            },
        },
    },
    "/webhooks/{id}/deliveries": {
        "parameters": [_ID_PARAM],
        "get": {
            "summary": "Deliveries of a subscription, newest first (dead letters: status=dead)",
            "operationId": "listWebhookDeliveries",
            "tags": ["webhooks"],
            "security": _BEARER,
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "schema": {"type": "string", "enum": list(_STATUSES)},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                },
                {"name": "cursor", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json("WebhookDeliveryPage", "A page of deliveries"),
                "400": _problem("Invalid query"),
                **_AUTH,
                "404": _problem("No such webhook"),
            },
        },
    },
    "/webhooks/{id}/deliveries/{delivery_id}/replay": {
        "parameters": [
            _ID_PARAM,
            {"name": "delivery_id", "in": "path", "required": True, "schema": {"type": "string"}},
        ],
        "post": {
            "summary": "Send a dead (or delivered) delivery again, with a fresh retry window",
            "operationId": "replayWebhookDelivery",
            "tags": ["webhooks"],
            "security": _BEARER,
            "responses": {
                "202": _json("WebhookDelivery", "Queued (same delivery id)"),
                **_AUTH,
                "404": _problem("No such webhook or delivery"),
            },
        },
    },
}
