"""What the sync and async clients share: every API call written once, without I/O.

Each operation is a generator ("sans-I/O"): it yields ``Send(request)`` or ``Sleep(s)``
and receives the ``httpx.Response`` (or the transport exception) back. The retry policy,
error mapping and result parsing therefore exist once; ``sync.py`` and ``async_.py`` only
drive the generators with a blocking or an asyncio ``httpx`` client.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from .. import __version__
from ..protocol import Proof, b64u_encode
from ..protocol.keys import PublicKey, public_key_der
from .errors import ProofMessengerClientError, TransportError, api_error
from .models import Approval, AuditEvent, BatchResult, KeyInfo, VerifyResult
from .receipts import Receipt, receipt_from_answers, receipt_leaf_index

__all__ = ["ApprovalTimeoutError", "Operations", "RetryPolicy", "Send", "Sleep"]

T = TypeVar("T")
ProofInput = Proof | Mapping[str, Any] | str | bytes
PublicKeyInput = bytes | str | PublicKey


class ApprovalTimeoutError(ProofMessengerClientError, TimeoutError):
    """The approval was still pending when ``wait_for_approval`` gave up."""

    def __init__(self, approval: Approval) -> None:
        super().__init__(f"approval {approval.id} is still {approval.status}")
        self.approval = approval


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for connection errors, 5xx and 429 only; a 4xx is never retried.

    Backoff is exponential with full jitter; a 429's Retry-After is respected (capped).
    """

    max_attempts: int = 4
    backoff_base: float = 0.2
    backoff_cap: float = 5.0
    max_retry_after: float = 30.0
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})

    def delay(self, attempt: int, retry_after: float | None, rng: Callable[[], float]) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return float(rng() * min(self.backoff_cap, self.backoff_base * 2.0 ** (attempt - 1)))


@dataclass(frozen=True)
class Send:
    request: httpx.Request


@dataclass(frozen=True)
class Sleep:
    seconds: float


Action = Send | Sleep
Reply = httpx.Response | Exception | None
Flow = Generator[Action, Reply, T]


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def proof_json(proof: ProofInput) -> Any:
    if isinstance(proof, Proof):
        return proof.to_json_dict()
    if isinstance(proof, str | bytes):
        return json.loads(proof)
    return dict(proof)


def public_key_b64u(key: PublicKeyInput) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return b64u_encode(key)
    return b64u_encode(public_key_der(key))


@dataclass
class Operations:
    """Every API call of the relay, as a generator (see the module docstring)."""

    base_url: str
    api_key: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rng: Callable[[], float] = random.random
    user_agent: str = f"proof-messenger-python/{__version__}"

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "User-Agent": self.user_agent,
            "Accept": "application/json",
            **(extra or {}),
        }

    def build(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return httpx.Request(
            method,
            self.base_url.rstrip("/") + path,
            params=clean or None,
            json=json_body,
            headers=self.headers(headers),
        )

    # --- the one request loop ---------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Flow[httpx.Response]:
        attempt = 0
        while True:
            attempt += 1
            request = self.build(method, path, json_body=json_body, params=params, headers=headers)
            reply = yield Send(request)
            last = attempt >= self.retry.max_attempts
            if isinstance(reply, Exception):
                if not isinstance(reply, httpx.TransportError) or last:
                    raise TransportError(
                        f"{method} {path}: {type(reply).__name__}: {reply}", attempt
                    ) from reply
                yield Sleep(self.retry.delay(attempt, None, self.rng))
                continue
            assert isinstance(reply, httpx.Response)
            status = reply.status_code
            if status in self.retry.retry_statuses and not last:
                yield Sleep(self.retry.delay(attempt, _retry_after(reply), self.rng))
                continue
            if status >= 400:
                raise self.error(reply)
            return reply

    @staticmethod
    def error(response: httpx.Response) -> Exception:
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        if not isinstance(problem, dict):
            problem = {}
        return api_error(
            response.status_code,
            problem,
            request_id=response.headers.get("x-request-id"),
            retry_after=_retry_after(response),
        )

    def _json(self, method: str, path: str, **kw: Any) -> Flow[Any]:
        response = yield from self.request(method, path, **kw)
        return response.json() if response.content else None

    # --- verification -----------------------------------------------------------------------

    def verify(
        self,
        proof: ProofInput,
        require_user_verification: bool = False,
        user_token: str | None = None,
    ) -> Flow[VerifyResult]:
        params = {"require_user_verification": "true"} if require_user_verification else None
        doc = yield from self._json(
            "POST",
            "/verify",
            json_body=proof_json(proof),
            params=params,
            headers=user_token_header(user_token),
        )
        return VerifyResult.from_json(doc)

    def verify_batch(
        self, proofs: list[ProofInput], user_token: str | None = None
    ) -> Flow[BatchResult]:
        body = {"proofs": [proof_json(p) for p in proofs]}
        doc = yield from self._json(
            "POST", "/verify/batch", json_body=body, headers=user_token_header(user_token)
        )
        return BatchResult.from_json(doc)

    # --- approvals --------------------------------------------------------------------------

    def request_approval(
        self,
        sub: str,
        context: Mapping[str, Any],
        ttl_seconds: int = 300,
        require_user_verification: bool = False,
        user_token: str | None = None,
    ) -> Flow[Approval]:
        body = {
            "sub": sub,
            "context": dict(context),
            "ttl_seconds": ttl_seconds,
            "require_user_verification": require_user_verification,
        }
        doc = yield from self._json(
            "POST", "/approvals", json_body=body, headers=user_token_header(user_token)
        )
        return Approval.from_json(doc)

    def get_approval(self, approval_id: str) -> Flow[Approval]:
        doc = yield from self._json("GET", f"/approvals/{_seg(approval_id)}")
        return Approval.from_json(doc)

    def approval_events_request(self, approval_id: str) -> httpx.Request:
        return httpx.Request(
            "GET",
            f"{self.base_url.rstrip('/')}/approvals/{_seg(approval_id)}/events",
            headers=self.headers({"Accept": "text/event-stream"}),
        )

    # --- keys -------------------------------------------------------------------------------

    def register_key(
        self, sub: str, public_key: PublicKeyInput, label: str | None = None
    ) -> Flow[KeyInfo]:
        body: dict[str, Any] = {"sub": sub, "public_key": public_key_b64u(public_key)}
        if label is not None:
            body["label"] = label
        doc = yield from self._json("POST", "/keys", json_body=body)
        return KeyInfo.from_json(doc)

    def revoke_key(self, kid: str, reason: str) -> Flow[KeyInfo]:
        doc = yield from self._json("DELETE", f"/keys/{_seg(kid)}", json_body={"reason": reason})
        return KeyInfo.from_json(doc)

    def get_key(self, kid: str) -> Flow[KeyInfo]:
        doc = yield from self._json("GET", f"/keys/{_seg(kid)}")
        return KeyInfo.from_json(doc)

    def list_keys(self, sub: str | None = None) -> Flow[list[KeyInfo]]:
        doc = yield from self._json("GET", "/keys", params={"sub": sub})
        return [KeyInfo.from_json(k) for k in doc["keys"]]

    # --- audit ------------------------------------------------------------------------------

    def audit_page(
        self, filters: Mapping[str, Any], cursor: str | None, page_size: int
    ) -> Flow[tuple[list[AuditEvent], str | None]]:
        params = {**filters, "limit": page_size, "cursor": cursor}
        doc = yield from self._json("GET", "/audit", params=params)
        return [AuditEvent.from_json(e) for e in doc["events"]], doc.get("next_cursor")

    def get_audit_event(self, event_id: str) -> Flow[AuditEvent]:
        doc = yield from self._json("GET", f"/audit/{_seg(event_id)}")
        return AuditEvent.from_json(doc)

    def audit_receipt(self, event_id: str) -> Flow[Receipt]:
        """Inclusion proof + covering signed checkpoint + the entry (not yet verified)."""
        proof = yield from self._json("GET", "/log/proof/inclusion", params={"event_id": event_id})
        index = receipt_leaf_index(proof)
        entries = yield from self._json(
            "GET", "/log/entries", params={"start": index, "end": index + 1}
        )
        return receipt_from_answers(event_id, proof, entries)


def user_token_header(user_token: str | None) -> dict[str, str] | None:
    """The end user's ID token travels in ``X-User-Token`` (the body stays a proof)."""
    return {"X-User-Token": user_token} if user_token else None


def _seg(value: str) -> str:
    """A path segment, percent-encoded so an id can never change the route."""
    from urllib.parse import quote

    return quote(value, safe="")


AUDIT_FILTERS = frozenset({"start", "end", "sub", "type", "status"})


def audit_filters(filters: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(filters) - AUDIT_FILTERS
    if unknown:
        raise TypeError(f"unknown audit filter {sorted(unknown)[0]!r}; use {sorted(AUDIT_FILTERS)}")
    return {k: v for k, v in filters.items() if v is not None}


def sse_status(line: str) -> str | None:
    """The ``status`` of one SSE ``data:`` line, if it carries one."""
    if not line.startswith("data:"):
        return None
    try:
        doc = json.loads(line[5:].strip())
    except ValueError:
        return None
    status = doc.get("status") if isinstance(doc, dict) else None
    return status if isinstance(status, str) else None


#: An answer to GET /approvals/{id}/events that means "no stream here, poll instead".
NO_STREAM_STATUSES = frozenset({404, 405, 406, 501})
