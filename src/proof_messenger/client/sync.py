"""The blocking client (``httpx.Client``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

from ..audit.checkpoint import NoteVerifier
from ._base import (
    NO_STREAM_STATUSES,
    ApprovalTimeoutError,
    Flow,
    Operations,
    ProofInput,
    PublicKeyInput,
    RetryPolicy,
    Send,
    T,
    audit_filters,
    sse_status,
)
from .models import (
    FINAL_APPROVAL_STATUSES,
    Approval,
    AuditEvent,
    BatchResult,
    KeyInfo,
    VerifyResult,
)
from .receipts import VerifiedReceipt, verify_receipt

__all__ = ["ProofMessengerClient"]


class ProofMessengerClient:
    """Talk to a relay. Thread-safe; reuse one instance (it pools connections).

    >>> client = ProofMessengerClient("https://relay.internal", api_key=os.environ["PM_API_KEY"])
    >>> result = client.verify(proof_json)   # raises e.g. Replayed, Expired, KeyRevoked
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._ops = Operations(base_url, api_key, retry or RetryPolicy())
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)
        self.timeout = timeout

    def __enter__(self) -> ProofMessengerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, flow: Flow[T]) -> T:
        reply: Any = None
        try:
            while True:
                action = flow.send(reply)
                if isinstance(action, Send):
                    try:
                        reply = self._http.send(action.request)
                    except httpx.HTTPError as exc:
                        reply = exc
                else:
                    time.sleep(action.seconds)
                    reply = None
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    # --- API --------------------------------------------------------------------------------

    def verify(
        self,
        proof: ProofInput,
        *,
        require_user_verification: bool = False,
        user_token: str | None = None,
    ) -> VerifyResult:
        """Verify one proof; a rejection raises the protocol error for its ``code``.

        ``user_token`` is the end user's ID token (sent as ``X-User-Token``): the relay
        checks that its subject is the proof's and gives its roles to the policy engine.

        A retried call (after a timeout or 5xx) can raise ``Replayed`` when the first
        attempt did commit: look the proof up with ``audit(type="proof.verified", ...)``
        or ``get_audit_event`` and treat it as accepted only if the audit says so.
        """
        return self._run(self._ops.verify(proof, require_user_verification, user_token))

    def verify_batch(
        self, proofs: list[ProofInput], *, user_token: str | None = None
    ) -> BatchResult:
        return self._run(self._ops.verify_batch(proofs, user_token))

    def request_approval(
        self,
        sub: str,
        context: Mapping[str, Any],
        ttl_seconds: int = 300,
        require_user_verification: bool = False,
        *,
        user_token: str | None = None,
    ) -> Approval:
        """Ask ``sub`` to approve ``context``; with ``user_token`` the answer is judged by the
        policy with that user's verified roles."""
        return self._run(
            self._ops.request_approval(
                sub, context, ttl_seconds, require_user_verification, user_token
            )
        )

    def get_approval(self, approval_id: str) -> Approval:
        return self._run(self._ops.get_approval(approval_id))

    def wait_for_approval(
        self, approval_id: str, timeout: float = 300.0, *, poll_interval: float = 1.0
    ) -> Approval:
        """Block until approved, declined or expired (SSE if the relay streams, else polling).

        Raises :class:`ApprovalTimeoutError` if still pending after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        stream = True
        while True:
            approval = self.get_approval(approval_id)
            if approval.is_final:
                return approval
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApprovalTimeoutError(approval)
            if stream:
                stream = self._await_event(approval_id, remaining)
            else:
                time.sleep(min(poll_interval, remaining))

    def _await_event(self, approval_id: str, remaining: float) -> bool:
        """Read the SSE stream until a final status or the deadline; False: no stream."""
        request = self._ops.approval_events_request(approval_id)
        request.extensions["timeout"] = httpx.Timeout(self.timeout, read=remaining).as_dict()
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError:
            time.sleep(min(1.0, remaining))
            return True
        try:
            if response.status_code in NO_STREAM_STATUSES:
                return False
            if response.status_code != 200:
                response.read()
                raise self._ops.error(response)
            for line in response.iter_lines():
                if sse_status(line) in FINAL_APPROVAL_STATUSES:
                    break
        except httpx.HTTPError:
            pass  # deadline or dropped stream: the caller re-reads the approval
        finally:
            response.close()
        return True

    def register_key(
        self, sub: str, public_key: PublicKeyInput, *, label: str | None = None
    ) -> KeyInfo:
        return self._run(self._ops.register_key(sub, public_key, label))

    def revoke_key(self, kid: str, reason: str) -> KeyInfo:
        return self._run(self._ops.revoke_key(kid, reason))

    def get_key(self, kid: str) -> KeyInfo:
        return self._run(self._ops.get_key(kid))

    def list_keys(self, sub: str | None = None) -> list[KeyInfo]:
        return self._run(self._ops.list_keys(sub))

    def audit(self, *, page_size: int = 100, **filters: Any) -> Iterator[AuditEvent]:
        """Every matching audit event, newest first, fetching pages as you iterate.

        Filters: ``start``, ``end`` (Unix seconds or ISO 8601), ``sub``, ``type``, ``status``.
        """
        clean = audit_filters(filters)
        cursor: str | None = None
        while True:
            events, cursor = self._run(self._ops.audit_page(clean, cursor, page_size))
            yield from events
            if cursor is None:
                return

    def get_audit_event(self, event_id: str) -> AuditEvent:
        return self._run(self._ops.get_audit_event(event_id))

    def audit_proof(
        self, event_id: str, log_key: NoteVerifier | Iterable[NoteVerifier]
    ) -> VerifiedReceipt:
        """Prove that ``event_id`` is in the relay's append-only log, without trusting it.

        Fetches the entry, its inclusion proof and a covering signed checkpoint, then checks
        the checkpoint's signature against ``log_key`` (pinned: load it once with
        ``proof_messenger.client.receipts.load_verifier`` from the log's public key) and the
        inclusion of the entry. Raises ``ReceiptError`` when anything does not verify.
        """
        receipt = self._run(self._ops.audit_receipt(event_id))
        return verify_receipt(receipt, log_key)
